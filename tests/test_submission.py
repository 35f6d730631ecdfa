"""dens.pipeline.submission: the evaluation server's S2EF submission file, local test scores, the
server's results read back."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import ase
import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from toy_model import build_toy_model, toy_experiment, train_toy_run

from dens.data.aselmdb import write_aselmdb
from dens.errors import InvalidDataError
from dens.inference import load_trained_model
from dens.pipeline.challenges import CHALLENGES, ServerResultsError, read_server_results
from dens.pipeline.submission import write_submission

pytestmark = pytest.mark.usefixtures("one_torch_thread")
OC20, OC22 = CHALLENGES["oc20"], CHALLENGES["oc22"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    train_toy_run(run_dir, toy_experiment(dens=False, epochs=1), 40, seed=3)
    return run_dir


def make_structures(n: int, seed: int, labels: bool = True, **keys: object) -> list[ase.Atoms]:
    """``n`` Cu/Au clusters with the first two atoms fixed, sid/fid and ``keys`` (each key's value
    a list: one per structure); EMT labels when ``labels``. sids run backwards, so that the
    server's id order differs from the row order."""
    rng = np.random.default_rng(seed)
    base = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    out = []
    for index in range(n):
        size = int(rng.integers(5, len(base) + 1))
        atoms = ase.Atoms(
            symbols=rng.choice(["Cu", "Au"], size=size),
            positions=base.positions[:size] + rng.normal(0.0, 0.1, size=(size, 3)),
        )
        atoms.set_constraint(FixAtoms(indices=[0, 1]))
        if labels:
            atoms.calc = EMT()
            atoms.get_forces()
        atoms.info = {"sid": 1000 - index, "fid": index % 3} | {
            key: values[index] for key, values in keys.items()
        }
        out.append(atoms)
    return out


def oc20_test_file(directory: Path, labels: bool = True, n: int = 10) -> Path:
    path = directory / "s2ef_test.aselmdb"
    categories = [OC20.splits[i % 4] for i in range(n)]
    structures = make_structures(n, seed=5, labels=labels, category=categories)
    write_aselmdb(path, structures, required_results=("energy", "forces") if labels else ())
    return path


def direct_predictions(run_dir: Path, path: Path) -> dict[str, tuple[float, np.ndarray]]:
    """id -> (energy, free-atom forces) predicted one structure at a time."""
    import ase.db

    from dens.data.structures import atoms_to_batch

    trained = load_trained_model(run_dir, build_toy_model)
    out = {}
    for row in ase.db.connect(path, readonly=True).select():
        atoms = row.toatoms()
        energy, forces = trained.predict(atoms_to_batch(atoms))
        out[f"{row.sid}_{row.fid}"] = (float(energy), forces[2:].numpy())
    return out


def test_oc20_submission_file_round_trip(run_dir: Path, tmp_path: Path) -> None:
    path = oc20_test_file(tmp_path)
    metrics = write_submission(run_dir, {"s2ef_test": path}, OC20, build_toy_model)
    with np.load(run_dir / "test" / "submission.npz") as npz:
        arrays = dict(npz)
    keys = {"ids", "energy", "forces", "chunk_idx"}
    assert set(arrays) == {f"{split}_{key}" for split in OC20.splits for key in keys}
    expected = direct_predictions(run_dir, path)
    seen = []
    for split in OC20.splits:
        ids = arrays[f"{split}_ids"]
        assert ids.dtype.kind == "U" and list(ids) == sorted(ids)  # the order np.unique gives
        assert arrays[f"{split}_energy"].dtype == np.float16
        assert arrays[f"{split}_forces"].dtype == np.float16
        assert arrays[f"{split}_chunk_idx"].dtype == np.int64
        assert arrays[f"{split}_energy"].shape == ids.shape
        assert arrays[f"{split}_chunk_idx"].shape == (len(ids) - 1,)
        chunks = np.split(arrays[f"{split}_forces"], arrays[f"{split}_chunk_idx"])
        for sid_fid, energy, forces in zip(ids, arrays[f"{split}_energy"], chunks, strict=True):
            want_energy, want_forces = expected[sid_fid]
            assert forces.shape == want_forces.shape  # free atoms only: the fixed two left out
            np.testing.assert_allclose(energy, want_energy, rtol=2e-3, atol=2e-3)
            np.testing.assert_allclose(forces, want_forces, rtol=2e-3, atol=2e-3)
        seen += list(ids)
    assert sorted(seen) == sorted(expected)  # every row once
    assert metrics["metrics_source"] == "local labels"
    assert metrics["num_structures"] == {"id": 3, "ood_ads": 3, "ood_cat": 2, "ood_both": 2}
    assert json.loads((run_dir / "test" / "metrics.json").read_text()) == metrics


def test_local_scores_are_the_servers_metrics_of_the_file(run_dir: Path, tmp_path: Path) -> None:
    """Energy and force MAE, force cosine and EFwT recomputed from the npz with numpy."""
    import ase.db

    path = oc20_test_file(tmp_path)
    metrics = write_submission(run_dir, {"s2ef_test": path}, OC20, build_toy_model)
    labels = {}
    for row in ase.db.connect(path, readonly=True).select():
        labels[f"{row.sid}_{row.fid}"] = (row.energy, row.forces[2:])
    with np.load(run_dir / "test" / "submission.npz") as npz:
        for split in OC20.splits:
            ids = npz[f"{split}_ids"]
            energy = npz[f"{split}_energy"].astype(np.float64)
            forces = npz[f"{split}_forces"].astype(np.float64)
            label_energy = np.array([labels[i][0] for i in ids])
            label_forces = np.concatenate([labels[i][1] for i in ids])
            chunks = npz[f"{split}_chunk_idx"]
            force_error = np.abs(forces - label_forces)
            cosine = np.sum(forces * label_forces, 1) / (
                np.linalg.norm(forces, axis=1) * np.linalg.norm(label_forces, axis=1)
            )
            worst = [chunk.max() for chunk in np.split(force_error, chunks)]
            within = (np.abs(energy - label_energy) < 0.02) & (np.array(worst) < 0.03)
            got = metrics["splits"][split]
            assert got["energy_mae_meV"] == pytest.approx(
                1000 * np.abs(energy - label_energy).mean()
            )
            assert got["forces_mae_meV_per_A"] == pytest.approx(1000 * force_error.mean())
            assert got["forces_cos"] == pytest.approx(cosine.mean())
            assert got["efwt"] == pytest.approx(within.mean())
    for key in ("energy_mae_meV", "forces_mae_meV_per_A", "forces_cos", "efwt"):
        per_split = [metrics["splits"][split][key] for split in OC20.splits]
        assert metrics[key] == pytest.approx(sum(per_split) / 4)  # splits weighted equally


def test_unlabelled_test_rows_await_the_server(run_dir: Path, tmp_path: Path) -> None:
    path = oc20_test_file(tmp_path, labels=False)
    metrics = write_submission(run_dir, {"s2ef_test": path}, OC20, build_toy_model)
    assert metrics["metrics_source"] is None
    assert "energy_mae_meV" not in metrics and "splits" not in metrics
    with np.load(run_dir / "test" / "submission.npz") as npz:
        assert sum(len(npz[f"{split}_ids"]) for split in OC20.splits) == 10


def test_oc22_splits_come_from_the_file_names_in_float32(run_dir: Path, tmp_path: Path) -> None:
    files = {}
    for index, split in enumerate(("s2ef_test_id", "s2ef_test_ood")):
        files[split] = tmp_path / f"{split}.aselmdb"
        structures = make_structures(3 + index, seed=index, category=["ood_ads"] * 4)
        for atoms in structures:
            atoms.info["sid"] += 100 * index
            if index:  # rows without fid: the trainer's id is the sid alone
                del atoms.info["fid"]
        write_aselmdb(files[split], structures)
    metrics = write_submission(run_dir, files, OC22, build_toy_model)
    with np.load(run_dir / "test" / "submission.npz") as npz:
        assert sorted(npz) == sorted(
            f"{split}_{key}"
            for split in ("id", "ood")
            for key in ("ids", "energy", "forces", "chunk_idx")
        )
        assert npz["ood_energy"].dtype == np.float32 and npz["id_forces"].dtype == np.float32
        assert len(npz["id_ids"]) == 3 and list(npz["ood_ids"]) == ["1097", "1098", "1099", "1100"]
    assert metrics["challenge"] == "oc22_s2ef_total" and metrics["precision"] == "float32"


def test_a_challenge_split_without_structures_is_refused(run_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "s2ef_test.aselmdb"
    write_aselmdb(path, make_structures(3, seed=0, category=["id", "ood_ads", "ood_cat"]))
    with pytest.raises(InvalidDataError, match="no structure of split 'ood_both'"):
        write_submission(run_dir, {"s2ef_test": path}, OC20, build_toy_model)


def test_rows_without_ids_or_split_are_named(run_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "s2ef_test.aselmdb"
    structures = make_structures(2, seed=0, category=["id", "nowhere"])
    write_aselmdb(path, structures)
    with pytest.raises(
        InvalidDataError, match=r"s2ef_test.aselmdb: row 2: no OC20 S2EF test split"
    ):
        write_submission(run_dir, {"s2ef_test": path}, OC20, build_toy_model)
    del structures[1].info["sid"]
    write_aselmdb(path, structures)
    with pytest.raises(InvalidDataError, match=r"row 2: no sid"):
        write_submission(run_dir, {"s2ef_test": path}, OC20, build_toy_model)


# -- the server's results --------------------------------------------------------------------------
def server_document(**changes: object) -> dict:
    document = {
        "challenge": "oc20_s2ef",
        "submission": "EvalAI submission 1 (test)",
        "units": {"energy": "eV", "forces": "eV/Å"},
        "splits": {
            split: {
                "energy_mae": 0.2 + i / 100,
                "forces_mae": 0.013,
                "forces_cos": 0.5,
                "efwt": 0.01,
            }
            for i, split in enumerate(OC20.splits)
        },
    }
    return document | changes


def write_json(path: Path, document: object) -> Path:
    path.write_text(json.dumps(document) if not isinstance(document, str) else document)
    return path


def test_server_results_in_meV_with_the_mean_over_splits(tmp_path: Path) -> None:
    path = write_json(tmp_path / "server_results.json", server_document())
    results = read_server_results(path, OC20)
    assert results["metrics_source"] == "evaluation server"
    assert results["splits"]["ood_cat"]["energy_mae_meV"] == pytest.approx(220.0)
    assert results["splits"]["id"]["forces_mae_meV_per_A"] == pytest.approx(13.0)
    assert results["energy_mae_meV"] == pytest.approx(215.0)
    assert results["efwt"] == pytest.approx(0.01) and results["forces_cos"] == pytest.approx(0.5)
    milli = server_document(units={"energy": "meV", "forces": "meV/A"})
    results = read_server_results(write_json(tmp_path / "milli.json", milli), OC20)
    assert results["energy_mae_meV"] == pytest.approx(0.215)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"splits": NaN}', "NaN is not a number"),
        (
            server_document(units={"energy": "kcal/mol", "forces": "eV/Å"}),
            r"units\.energy: 'kcal/mol'",
        ),
        (server_document(challenge="oc22_s2ef_total"), r"challenge: 'oc22_s2ef_total', but"),
        (
            server_document(splits={"id": {"energy_mae": 0.2, "forces_mae": 0.01}}),
            "splits: missing ood_ads, ood_cat, ood_both",
        ),
        (
            server_document(splits={"id": {"energy_mae": 0.2}}),
            r"splits\.id: .*'forces_mae' is a required property",
        ),
        (
            server_document(splits={"id": {"energy_mae": -1, "forces_mae": 0.1}}),
            r"splits\.id\.energy_mae: -1",
        ),
    ],
)
def test_bad_server_results_name_the_file_and_key(
    tmp_path: Path, document: object, message: str
) -> None:
    path = write_json(tmp_path / "server_results.json", document)
    with pytest.raises(ServerResultsError, match=rf"server_results\.json: .*{message}"):
        read_server_results(path, OC20)


def test_submission_command_writes_both_files(
    run_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """`dens submission` on an OC22 experiment at scale smoke, predicting with the toy run."""
    from dens.pipeline import cli, submission

    files = []
    for index, split in enumerate(("s2ef_test_id", "s2ef_test_ood")):
        files.append(tmp_path / f"{split}.aselmdb")
        structures = make_structures(2, seed=7 + index, category=["id", "id"])
        for atoms in structures:
            atoms.info["sid"] += 100 * index
        write_aselmdb(files[-1], structures)
    toy = functools.partial(submission.write_submission, build_model=build_toy_model)
    monkeypatch.setattr(submission, "write_submission", toy)
    arguments = ["--scale", "smoke", "--run-dir", str(run_dir), "--device", "cpu"]
    status = cli.main(["submission", "oc22/eqv2-dens-127m", *arguments, *map(str, files)])
    assert status == 0
    out = capsys.readouterr().out
    assert "OC22 S2EF-Total submission (id 2, ood 2); local labels: energy MAE" in out
    assert (run_dir / "test" / "submission.npz").is_file()
    metrics = json.loads((run_dir / "test" / "metrics.json").read_text())
    assert metrics["challenge"] == "oc22_s2ef_total"
    assert cli.main(["submission", "md17-aspirin/equiformer-l2", *arguments, str(files[0])]) == 2
    assert "no evaluation-server challenge" in capsys.readouterr().err
