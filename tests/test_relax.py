"""dens.relaxation: the batched L-BFGS against ASE's LBFGS with our calculator, fixed atoms, systems
leaving and entering the batch, resuming after a kill, the IS2RE submission file and metrics,
clear errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import ase
import ase.build
import numpy as np
import pytest
import torch
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.optimize import LBFGS
from toy_model import build_toy_model, toy_experiment

from dens.calculator import DeNSCalculator
from dens.data.aselmdb import write_aselmdb
from dens.data.batch import Batch
from dens.data.structures import atoms_to_data
from dens.data.validation import InvalidStructureError
from dens.errors import ConfigError, InvalidDataError
from dens.inference import load_trained_model
from dens.pipeline import is2re
from dens.pipeline.challenges import IS2RE_CHALLENGES, ServerResultsError, read_server_results
from dens.relaxation import driver
from dens.relaxation.driver import System, relax_systems
from dens.relaxation.lbfgs import BatchedLBFGS, LBFGSSettings
from dens.stopping import TIME_LIMIT, StopRequested

pytestmark = pytest.mark.usefixtures("one_torch_thread")
OC20, OC22 = IS2RE_CHALLENGES["oc20"], IS2RE_CHALLENGES["oc22"]
SETTINGS = LBFGSSettings(max_steps=60)  # OC20's maxstep, memory, damping, alpha and fmax


def slab(seed: int, adsorbate: str | None = "O") -> ase.Atoms:
    """A periodic Cu(111) 2x2x2 slab (bottom layer fixed, tags 0/1/2) with an adsorbate, free
    atoms rattled by 0.1 Å."""
    rng = np.random.default_rng(seed)
    atoms = ase.build.fcc111("Cu", (2, 2, 2), vacuum=5.0)
    if adsorbate:
        ase.build.add_adsorbate(atoms, adsorbate, 1.6, "fcc")
    bottom = atoms.positions[:, 2] < atoms.positions[:, 2].min() + 0.5
    atoms.set_constraint(FixAtoms(mask=bottom))
    atoms.set_tags(np.where(bottom, 0, np.where(atoms.numbers == 29, 1, 2)))
    atoms.positions[~bottom] += rng.normal(0.0, 0.1, size=(int((~bottom).sum()), 3))
    atoms.pbc = True
    return atoms


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A toy run (conservative pair potential) trained on EMT slabs like the relaxed ones."""
    from dens.train import train

    structures = []
    for seed in range(40):
        atoms = slab(100 + seed)
        atoms.calc = EMT()
        atoms.get_forces()
        structures.append(atoms_to_data(atoms, labels=True))
    run_dir = tmp_path_factory.mktemp("run")
    experiment = toy_experiment(dens=False, epochs=2, lr=3e-2)
    train(experiment, structures[:32], structures[32:], run_dir, build_toy_model, progress=False)
    return run_dir


def relax_file(path: Path, n: int, labels: bool = True, seed: int = 0, **keys) -> Path:
    """An IS2RE split of ``n`` slabs: sid (descending, so the server's sorted order differs from
    the row order), y_relaxed when ``labels``, and ``keys`` (a list per key)."""
    rows = []
    for index in range(n):
        atoms = slab(seed + index)
        atoms.info = {"sid": 900 - index} | {key: values[index] for key, values in keys.items()}
        if labels:
            atoms.info["y_relaxed"] = -0.5 + 0.1 * index
        rows.append(atoms)
    write_aselmdb(path, rows, required_results=())
    return path


# -- the optimiser -------------------------------------------------------------------------------
def test_batched_lbfgs_agrees_with_ase_lbfgs_and_our_calculator(run_dir: Path) -> None:
    """Five slabs, three at a time (systems leave and enter), against ASE's LBFGS with the same
    settings (maxstep 0.04 Å, memory 50, damping 1, alpha 70, fmax 0.02 eV/Å, 60 steps at most)
    driven by DeNSCalculator: final energies within 1 meV, fixed atoms exactly in place."""
    trained = load_trained_model(run_dir, build_toy_model)
    initial = [slab(seed) for seed in range(5)]
    systems = [
        System(str(i), atoms_to_data(a), torch.tensor(a.positions)) for i, a in enumerate(initial)
    ]
    ours = {r.key: r for r in relax_systems(systems, trained.predict, SETTINGS, batch_size=3)}
    assert sorted(ours) == [str(i) for i in range(5)]
    calculator = DeNSCalculator(run_dir, build_toy_model)
    converged_somewhere = False
    for index, atoms in enumerate(initial):
        reference = atoms.copy()
        reference.calc = calculator
        optimizer = LBFGS(reference, maxstep=0.04, memory=50, damping=1.0, alpha=70.0, logfile=None)
        converged = optimizer.run(fmax=0.02, steps=60)
        result = ours[str(index)]
        assert abs(result.energy - reference.get_potential_energy()) < 1e-3
        assert result.converged == converged and abs(result.steps - optimizer.nsteps) <= 1
        fixed = atoms.constraints[0].index
        np.testing.assert_array_equal(result.positions[fixed], atoms.positions[fixed])
        assert np.abs(result.positions - atoms.positions).max() > 0.05  # it did relax
        converged_somewhere |= converged
    assert converged_somewhere


def harmonic(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """E = sum_i k (r_i - r0_i)^2 / 2 with stiffness k = atomic number / 10 and minimum r0 = the
    tag-th unit vector (times 100 for helium, too far to reach): forces -k (r - r0)."""
    k = batch.atomic_numbers.to(torch.float64)[:, None] / 10
    far = torch.where(batch.atomic_numbers == 2, 100.0, 1.0).to(torch.float64)[:, None]
    r0 = torch.nn.functional.one_hot(batch.tags, 3).to(torch.float64) * far
    forces = -k * (batch.pos.to(torch.float64) - r0)
    energy = torch.zeros(int(batch.natoms.numel()), dtype=torch.float64)
    energy.index_add_(0, batch.batch, 0.5 * (k * (batch.pos - r0) ** 2).sum(1))
    return energy, forces


def toy_system(key: str, z: int, n: int = 3, fixed: int = 1) -> System:
    atoms = ase.Atoms(numbers=[z] * n, positions=np.arange(3 * n).reshape(n, 3) * 0.3, pbc=True)
    atoms.cell = np.eye(3) * 10
    atoms.set_tags(np.arange(n) % 3)
    atoms.set_constraint(FixAtoms(indices=list(range(fixed))))
    return System(key, atoms_to_data(atoms, torch.float64))


def test_systems_leave_when_done_and_new_ones_enter() -> None:
    """At most batch_size systems per model call; each leaves on convergence (or at max_steps)
    and is replaced; a system's result does not depend on its batch companions."""
    stiffness = {"soft": 1, "stiff": 8, "mid": 3, "stiffer": 9, "far": 2}
    systems = [toy_system(key, z, n=2 + i) for i, (key, z) in enumerate(stiffness.items())]
    calls: list[list[int]] = []

    def recording(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(batch.natoms.tolist())
        return harmonic(batch)

    settings = LBFGSSettings(max_steps=40, fmax=1e-3, maxstep=0.2)
    together = {r.key: r for r in relax_systems(systems, recording, settings, batch_size=2)}
    assert max(len(sizes) for sizes in calls) == 2
    assert sum(len(sizes) for sizes in calls) == sum(r.steps + 1 for r in together.values())
    assert together["far"].steps == 40 and not together["far"].converged  # max_steps
    for key in ("soft", "stiff", "mid", "stiffer"):
        result = together[key]
        assert result.converged and result.max_force < 1e-3 and result.steps < 40
        alone = next(relax_systems([s for s in systems if s.key == key], harmonic, settings, 1))
        np.testing.assert_array_equal(alone.positions, result.positions)
        assert alone.steps == result.steps
    assert calls[0] == [2, 3]  # the first two systems start together
    assert len(calls) < sum(r.steps + 1 for r in together.values())  # batched


def test_a_relaxation_stopped_at_its_time_limit_keeps_what_finished(monkeypatch) -> None:
    """stop_at (a Slurm job ending itself before its limit, dens.pipeline.slurm) raises
    StopRequested (exit status 75) before the next model call; what finished before it was
    yielded."""
    systems = [toy_system(key, z, n=3) for key, z in (("stiff", 8), ("far", 2))]
    settings = LBFGSSettings(max_steps=40, fmax=1e-3, maxstep=0.2)
    (alone,) = relax_systems(systems[:1], harmonic, settings, batch_size=1)
    assert alone.converged and alone.steps < 30
    rounds = alone.steps + 1  # model calls until "stiff" leaves; then "far" enters
    checks = iter(range(10_000))  # the clock passes stop_at 2 rounds later
    clock = SimpleNamespace(time=lambda: 2.0 * (next(checks) >= rounds + 2))
    monkeypatch.setattr(driver, "time", clock)
    finished = []
    with pytest.raises(StopRequested) as stopped:
        for result in relax_systems(systems, harmonic, settings, batch_size=1, stop_at=1.0):
            finished.append(result.key)
    assert stopped.value.code == 75 and stopped.value.reason == TIME_LIMIT
    assert finished == ["stiff"]  # "far" needs 40 steps


def test_optimiser_keeps_fixed_atoms_and_refuses_bad_input() -> None:
    optimizer = BatchedLBFGS(LBFGSSettings())
    data = toy_system("a", 10, n=4, fixed=2).data
    optimizer.add([data.pos], [data.fixed])
    before = optimizer.positions.clone()
    for _ in range(5):
        data.pos, data.batch = optimizer.positions, optimizer.batch
        optimizer.step(harmonic(data)[1])
    moved = (optimizer.positions - before).norm(dim=1)
    assert (moved[:2] == 0).all() and (moved[2:] > 0).all()
    with pytest.raises(ValueError, match=r"forces \(3, 3\) for positions \(4, 3\)"):
        optimizer.step(torch.ones(3, 3))
    with pytest.raises(ValueError, match=r"system 0: positions \(4, 2\)"):
        optimizer.add([torch.zeros(4, 2)], [torch.zeros(4, dtype=torch.bool)])
    with pytest.raises(ConfigError, match=r"relax\.fmax must be > 0, got 0\.0"):
        LBFGSSettings(fmax=0.0)
    with pytest.raises(ConfigError, match=r"relax\.memory must be >= 1, got 0"):
        LBFGSSettings(memory=0)
    with pytest.raises(ConfigError, match=r"relax\.maxstep must be <= 1\.0, got 2\.0"):
        LBFGSSettings(maxstep=2.0)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        next(relax_systems([toy_system("a", 10)], harmonic, batch_size=0))


# -- the relax job ---------------------------------------------------------------------------------
def test_relax_run_scores_labels_writes_structures_and_resumes_after_a_kill(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {
        "is2re_test_id": relax_file(tmp_path / "is2re_test_id.aselmdb", 3),
        "is2re_test_ood": relax_file(tmp_path / "is2re_test_ood.aselmdb", 2, seed=10),
    }
    (run_dir / "relax").mkdir(exist_ok=True)
    for name in ("systems.jsonl", "state.json"):
        (run_dir / "relax" / name).unlink(missing_ok=True)
    args = (run_dir, files, OC22, SETTINGS, 2, None, build_toy_model)
    # a first job killed after two systems finished, in the middle of writing the third line
    killed = is2re.relax_structures
    first = []

    def interrupted(*a, **k):
        for record in killed(*a, **k):
            first.append(record["key"])
            yield record
            if len(first) == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(is2re, "relax_structures", interrupted)
    with pytest.raises(KeyboardInterrupt):
        is2re.relax_run(*args, progress=False)
    with open(run_dir / "relax" / "systems.jsonl", "a") as handle:
        handle.write('{"key": "is2re_te')
    monkeypatch.setattr(is2re, "relax_structures", killed)
    relaxed: list[str] = []
    original = is2re.relax_systems

    def recording(systems, *a, **k):
        systems = list(systems)
        relaxed.extend(s.key for s in systems)
        return original(systems, *a, **k)

    monkeypatch.setattr(is2re, "relax_systems", recording)
    metrics = is2re.relax_run(*args, progress=False)
    assert metrics["systems_resumed"] == 2 and metrics["systems_relaxed_now"] == 3
    assert not set(relaxed) & set(first) and len(relaxed) == 3  # finished ones not again

    records = is2re.read_finished(run_dir / "relax" / "systems.jsonl")
    assert len(records) == 5
    for split, n in (("id", 3), ("ood", 2)):
        errors = [r["energy"] - r["label"] for r in records.values() if r["split"] == split]
        assert len(errors) == n
        assert metrics["splits"][split]["energy_mae_meV"] == pytest.approx(
            1000 * np.mean(np.abs(errors))
        )
    assert metrics["energy_mae_meV"] == pytest.approx(
        (metrics["splits"]["id"]["energy_mae_meV"] + metrics["splits"]["ood"]["energy_mae_meV"]) / 2
    )
    assert metrics["metrics_source"] == "local labels" and metrics["num_systems"] == {
        "id": 3,
        "ood": 2,
    }
    assert json.loads((run_dir / "relax" / "metrics.json").read_text()) == metrics

    import ase.db

    with ase.db.connect(run_dir / "relax" / "relaxed.aselmdb", readonly=True) as db:
        rows = list(db.select())
    assert len(rows) == 5
    for row in rows:
        record = records[f"{row.source_split}/{row.sid}"]
        np.testing.assert_allclose(row.positions, record["positions"])
        assert row.energy == pytest.approx(record["energy"]) and row.steps == record["steps"]
        assert row.toatoms().constraints  # fixed atoms kept

    # a rerun with other settings starts afresh
    relaxed.clear()
    is2re.relax_run(
        run_dir, files, OC22, LBFGSSettings(max_steps=5), 2, None, build_toy_model, progress=False
    )
    assert len(relaxed) == 5


def test_oc20_is2re_submission_file_without_labels(run_dir: Path, tmp_path: Path) -> None:
    """The server's layout (fairchem make_submission_file.py --is2re-relaxations): per split
    <split>_ids (sids, sorted) and <split>_energy (float64) only; no metrics without labels."""
    categories = ["id", "ood_ads", "ood_cat", "ood_both", "id", "ood_both"]
    path = relax_file(tmp_path / "is2re_test.aselmdb", 6, labels=False, category=categories)
    metrics = is2re.relax_run(
        run_dir,
        {"is2re_test": path},
        OC20,
        LBFGSSettings(max_steps=10),
        4,
        None,
        build_toy_model,
        progress=False,
    )
    assert metrics["metrics_source"] is None and "energy_mae_meV" not in metrics
    records = {
        r["sid"]: r for r in is2re.read_finished(run_dir / "relax" / "systems.jsonl").values()
    }
    with np.load(run_dir / "relax" / "submission.npz") as npz:
        arrays = dict(npz)
    assert set(arrays) == {f"{s}_{k}" for s in OC20.splits for k in ("ids", "energy")}
    assert list(arrays["id_ids"]) == ["896", "900"]  # rows 1 and 5: sids 900, 896
    assert list(arrays["ood_both_ids"]) == ["895", "897"]
    for split in OC20.splits:
        ids, energy = arrays[f"{split}_ids"], arrays[f"{split}_energy"]
        assert ids.dtype.kind == "U" and list(ids) == sorted(ids)
        assert energy.dtype == np.float64
        expected = [records[sid]["energy"] for sid in ids]
        np.testing.assert_array_equal(energy, expected)
        assert all(records[sid]["split"] == split for sid in ids)
    assert sum(len(arrays[f"{s}_ids"]) for s in OC20.splits) == 6


def test_relax_refuses_bad_input_naming_it(run_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "is2re_test_id.aselmdb"
    atoms = slab(0)
    atoms.info = {"y_relaxed": 0.1}
    write_aselmdb(path, [atoms], required_results=())
    with pytest.raises(InvalidDataError, match=r"is2re_test_id.aselmdb: row 1: no sid"):
        is2re.relax_run(
            run_dir,
            {"is2re_test_id": path},
            OC22,
            SETTINGS,
            2,
            None,
            build_toy_model,
            progress=False,
        )
    atoms = slab(0, adsorbate="N")  # N: absent from the run's training data
    atoms.info = {"sid": 5, "y_relaxed": 0.0}
    write_aselmdb(path, [atoms], required_results=())
    ood = relax_file(tmp_path / "is2re_test_ood.aselmdb", 1)
    files = {"is2re_test_id": path, "is2re_test_ood": ood}
    metrics = is2re.relax_run(
        run_dir, files, OC22, LBFGSSettings(max_steps=2), 2, None, build_toy_model, progress=False
    )
    assert metrics["systems_with_unseen_elements"] == {"id": 1, "ood": 0}
    mixed = tmp_path / "is2re_test_ood.aselmdb"
    relax_file(mixed, 2, labels=False)
    labelled = relax_file(tmp_path / "is2re_test_id.aselmdb", 2)
    with pytest.raises(InvalidDataError, match="some rows have y_relaxed and some not"):
        is2re.relax_run(
            run_dir,
            {"is2re_test_id": labelled, "is2re_test_ood": mixed},
            OC22,
            SETTINGS,
            2,
            None,
            build_toy_model,
            progress=False,
        )
    missing = r"is2re_test_id.aselmdb: no system of OC20 IS2RE split\(s\) ood_ads, ood_cat"
    with pytest.raises(InvalidDataError, match=missing):
        is2re.relax_run(
            run_dir,
            {"is2re_test_id": labelled},
            OC20,
            SETTINGS,
            2,
            None,
            build_toy_model,
            progress=False,
        )


def test_is2re_server_results_read_back(tmp_path: Path) -> None:
    path = tmp_path / "server_results.json"
    splits = {s: {"energy_mae": 0.3 + i / 100, "ewt": 0.1} for i, s in enumerate(OC20.splits)}
    path.write_text(
        json.dumps({"challenge": "oc20_is2re", "units": {"energy": "eV"}, "splits": splits})
    )
    results = read_server_results(path, OC20)
    assert results["energy_mae_meV"] == pytest.approx(315.0) and results["ewt"] == 0.1
    assert "forces_mae_meV_per_A" not in results["splits"]["id"]
    path.write_text(
        json.dumps({"challenge": "oc20_s2ef", "units": {"energy": "eV"}, "splits": splits})
    )
    with pytest.raises(ServerResultsError, match=r"units: .*'forces' is a required property"):
        read_server_results(path, OC20)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("nan position", r"row 1 \(sid 7\): atom 3 \(Cu\) has position \[nan, .*not finite$"),
        ("Z=150", r"row 1 \(sid 7\): atom 8 has atomic number 150 \(Z=150\), outside"),
        ("no atom", r"row 1 \(sid 7\): 0 atom\(s\); a periodic cell needs at least 1"),
    ],
)
def test_relax_refuses_malformed_systems_naming_the_sid(
    run_dir: Path, tmp_path: Path, change: str, message: str
) -> None:
    """Before: a NaN position or an unknown element ended in a traceback naming no sid, and a
    0-atom system was "relaxed" and reported with an energy."""
    atoms = slab(0)
    if change == "nan position":
        atoms.positions[3, 0] = np.nan
    elif change == "Z=150":
        atoms.numbers[8] = 150
    else:
        atoms = atoms[:0]
    atoms.info = {"sid": 7, "y_relaxed": 0.0}
    path = tmp_path / "is2re_test_id.aselmdb"
    write_aselmdb(path, [atoms], required_results=())
    files = {"is2re_test_id": path, "is2re_test_ood": relax_file(tmp_path / "ood.aselmdb", 1)}
    with pytest.raises(InvalidStructureError, match=r"is2re_test_id\.aselmdb: " + message):
        is2re.relax_run(run_dir, files, OC22, SETTINGS, 2, None, build_toy_model, progress=False)


def test_relax_systems_checks_each_system_as_it_enters() -> None:
    good, bad = toy_system("good", 10, n=3), toy_system("bad", 10, n=3)
    bad.data.pos[1, 2] = float("inf")
    relaxed = relax_systems([good, bad], harmonic, LBFGSSettings(max_steps=3), batch_size=1)
    assert next(relaxed).key == "good"
    with pytest.raises(InvalidStructureError, match=r"^system bad: atom 1 \(Ne\) has position"):
        next(relaxed)
