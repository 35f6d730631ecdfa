"""`dens import-checkpoint`: a fairchem 1.x checkpoint becomes a run that `dens evaluate` and the
ASE calculator read like a trained one (dens.pipeline.checkpoint_import), on the committed reference
fixture (tests/fixtures/equiformer_v2/README.md): labels written from the reference's own
outputs, so our evaluation of the imported run must find (almost) no error."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase.calculators.singlepoint import SinglePointCalculator

from dens.calculator import DeNSCalculator
from dens.checkpoint import load_checkpoint
from dens.data.aselmdb import write_aselmdb

FIXTURE = Path(__file__).parent / "fixtures" / "equiformer_v2"
REPO = Path(__file__).parents[1]


def dens_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dens", *args], cwd=REPO, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def labelled_split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """The fixture's structures with the reference's de-normalised float64 outputs as labels."""
    reference = torch.load(FIXTURE / "reference_outputs.pt", weights_only=True)
    mean, std = reference["meta"]["energy_normalizer"]
    outputs = reference["l4m2"]["equiformer_v2"]["float64"]
    energies = outputs["energy"] * std + mean
    forces = outputs["forces"] * std
    structures = ase.io.read(FIXTURE / "structures.extxyz", ":")
    batch = reference["structures"]["batch"]
    for index, atoms in enumerate(structures):
        atoms.calc = SinglePointCalculator(
            atoms,
            energy=float(energies[index]),
            forces=forces[batch == index].numpy(),
        )
    path = tmp_path_factory.mktemp("split") / "val_id.aselmdb"
    write_aselmdb(path, structures)
    return path, structures


def test_imported_run_evaluates_and_drives_ase_like_a_trained_one(
    tmp_path: Path, labelled_split: tuple[Path, list]
) -> None:
    split, structures = labelled_split
    run_dir = tmp_path / "run"
    checkpoint = FIXTURE / "checkpoint_l4m2_equiformer_v2.pt"
    done = dens_cli(
        "import-checkpoint", str(checkpoint), "oc20-2m/eqv2-e12", "--run-dir", str(run_dir),
        "--scale", "mini",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "82970 parameters" in done.stdout
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best["imported_from"]["file"] == checkpoint.name
    assert best["experiment"]["model"]["hyperparameters"]["lmax"] == 4

    done = dens_cli(
        "evaluate", "oc20-2m/eqv2-e12", str(split), "--run-dir", str(run_dir), "--scale", "mini",
        "--device", "cpu",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["energy_mae_meV"] < 0.1  # 1e-4 eV
    assert metrics["forces_mae_meV_per_A"] < 0.1  # 1e-4 eV/Å
    assert metrics["imported_from"]["sha256"] == best["imported_from"]["sha256"]
    assert "train_time_s" not in metrics and metrics["epochs_trained"] == 0

    expected_energy = structures[2].get_potential_energy()
    expected_forces = structures[2].get_forces(apply_constraint=False)
    atoms = structures[2].copy()
    atoms.calc = DeNSCalculator(run_dir)
    assert atoms.get_potential_energy() == pytest.approx(expected_energy, abs=1e-4)
    np.testing.assert_allclose(atoms.get_forces(apply_constraint=False), expected_forces, atol=1e-4)


def test_a_checkpoint_of_another_family_is_refused_by_name(tmp_path: Path) -> None:
    checkpoint = FIXTURE / "checkpoint_l4m2_equiformer_v2.pt"
    done = dens_cli(
        "import-checkpoint", str(checkpoint), "md17-ethanol/equiformer-l2", "--run-dir",
        str(tmp_path / "run"), "--scale", "mini",
    )  # fmt: skip
    assert done.returncode != 0
    assert "no fairchem checkpoint importer for model family 'equiformer'" in done.stderr
    assert not (tmp_path / "run").exists()


def test_energy_lin_ref_of_an_oc22_model_becomes_element_references() -> None:
    """fairchem's OC22 EquiformerV2 adds sum_i lin_ref[Z_i] (normalised units) to its energy."""
    from dens.pipeline.checkpoint_import import imported_normalizer

    lin_ref = torch.zeros(90)
    lin_ref[8], lin_ref[22] = -0.25, -0.5  # O, Ti
    normalizers = {"energy": {"mean": 0.0, "std": 25.0}, "forces": {"mean": 0.0, "std": 0.15}}
    normalizer = imported_normalizer(normalizers, lin_ref)
    z, batch = torch.tensor([8, 8, 22]), torch.zeros(3, dtype=torch.long)
    model_energy = torch.tensor([0.1], dtype=torch.float64)
    expected = (0.1 + 2 * -0.25 - 0.5) * 25.0
    assert float(normalizer.denormalize_energy(model_energy, z, batch)) == pytest.approx(expected)
    assert normalizer.force_scale == 0.15


def lin_ref_checkpoint(tmp_path: Path) -> Path:
    """The fixture checkpoint with the training data's linear reference named in its config, as
    the official DeNS OC22 config trains (dataset.train.lin_ref; model use_energy_lin_ref
    False): its model predicts the energy minus sum_i coeff[Z_i]."""
    checkpoint = torch.load(FIXTURE / "checkpoint_l4m2_equiformer_v2.pt", weights_only=True)
    checkpoint["config"].setdefault("dataset", {}).setdefault("train", {})["lin_ref"] = (
        "configs/oc22/linref/oc22_linfit_coeffs.npz"
    )
    path = tmp_path / "lin_ref_checkpoint.pt"
    torch.save(checkpoint, path)
    return path


def test_a_checkpoint_trained_on_linearly_referenced_energies_gets_the_reference(
    tmp_path: Path,
) -> None:
    """A DeNS OC22 checkpoint (energies minus the published linear reference in training, no
    energy_lin_ref added by the model) predicts total energies only with the experiment's
    optim.energy_reference_file as element references; without one it is refused, not
    imported with none (which put the OC22 energies off by sum_i coeff[Z_i], hundreds of eV)."""
    import dataclasses

    from dens.models.so3.fairchem_import import CheckpointImportError
    from dens.pipeline.checkpoint_import import import_checkpoint
    from dens.pipeline.registry import load_registry

    source = lin_ref_checkpoint(tmp_path)
    paper = load_registry({"scale": "paper"})
    experiment = "oc22/eqv2-dens-127m"
    reference_file = tmp_path / paper.resolve(experiment)["optim"]["energy_reference_file"]
    reference_file.parent.mkdir(parents=True)
    coeff = np.zeros(100)
    coeff[[8, 12, 22]] = [-5.0, -1.5, -7.25]  # O, Mg, Ti
    np.savez(reference_file, coeff=coeff)
    paper = dataclasses.replace(paper, root=tmp_path)
    state = import_checkpoint(source, tmp_path / "run", paper, paper.resolve(experiment))
    references = state["normalizer"]["element_references"]
    assert torch.equal(references[:100], torch.from_numpy(coeff))

    mini = load_registry({"scale": "mini"})  # sets no energy_reference_file
    with pytest.raises(CheckpointImportError, match="lin_ref"):
        import_checkpoint(source, tmp_path / "run-mini", mini, mini.resolve(experiment))
    assert not (tmp_path / "run-mini").exists()


def test_an_imported_run_records_the_elements_it_may_be_used_on(
    tmp_path: Path, labelled_split: tuple[Path, list], capsys: pytest.CaptureFixture
) -> None:
    """From the experiment's prepared train split when there is one (the calculator then refuses
    other elements in one line, as for a trained run); else the model's embedding range, said so.
    Before: an imported run stored no elements and answered for any."""
    import dataclasses

    from dens.errors import UnsupportedStructureError
    from dens.pipeline import paths
    from dens.pipeline.checkpoint_import import import_checkpoint
    from dens.pipeline.registry import load_registry

    checkpoint = FIXTURE / "checkpoint_l4m2_equiformer_v2.pt"
    registry = dataclasses.replace(load_registry({"scale": "mini"}), root=tmp_path)
    experiment = "oc20-2m/eqv2-e12"
    state = import_checkpoint(checkpoint, tmp_path / "bare", registry, registry.resolve(experiment))
    assert state["normalizer"]["elements"] == list(range(1, 90))
    assert state["imported_from"]["elements_source"].startswith("the model's embedding range 1..89")
    assert "may be used on elements the model's embedding range 1..89" in capsys.readouterr().err

    _, structures = labelled_split
    train = tmp_path / paths.dataset("mini", registry.resolve(experiment)["dataset"]).split("train")
    write_aselmdb(train / "shard-000000.aselmdb", structures)  # a split folder of one shard
    state = import_checkpoint(checkpoint, tmp_path / "run", registry, registry.resolve(experiment))
    assert state["normalizer"]["elements"] == [1, 6, 8, 29, 78]  # H, C, O, Cu, Pt
    assert str(train) in state["imported_from"]["elements_source"]
    atoms = structures[2].copy()
    atoms.numbers[atoms.numbers == 29] = 47  # Ag
    atoms.calc = DeNSCalculator(tmp_path / "run")
    with pytest.raises(UnsupportedStructureError, match=r"element Ag not in the training data"):
        atoms.get_potential_energy()


# -- the published DeNS layout (tests/fixtures/published, see its README) ------------------------
PUBLISHED = Path(__file__).parent / "fixtures" / "published"


def test_the_published_dens_layout_reproduces_the_official_model() -> None:
    """The official DeNS model (e98b747, on ocp 5d0f59e) saved by ocp's trainer: name and
    arguments in config["model"] / config["model_attributes"], "module." keys, normalisers as
    {mean, std}, EMA shadow parameters. Our float64 forward with the EMA weights gives its
    outputs, the edge frames rolled as the reference rolled them (its seed before each forward):
    measured 4e-17 eV and eV/Å, the noise head 1e-16 (the live weights are 4e-4 eV away).
    Before the ocp layout was read, the import failed on config["model"] being a str."""
    from dens.data.batch import Batch
    from dens.data.structures import atoms_to_data
    from dens.models.equiformer_v2.import_fairchem import load_fairchem_checkpoint

    reference = torch.load(PUBLISHED / "reference_outputs.pt", weights_only=True)
    model, info = load_fairchem_checkpoint(PUBLISHED / "eq2_dens_tiny.pt", dtype=torch.float64)
    assert info["ema"] and info["hyperparameters"]["noise_head"]
    model.edge_roll = "random"
    structures = ase.io.read(FIXTURE / "structures.extxyz", ":")
    data = Batch.from_data_list([atoms_to_data(atoms, torch.float64) for atoms in structures])
    forces, mask = reference["dens_inputs"]["forces"], reference["dens_inputs"]["noise_mask"]
    for name, args in (("float64", ()), ("float64_denoise", (forces * mask[:, None],))):
        torch.manual_seed(reference["meta"]["roll_seed"])
        with torch.no_grad():
            out = model(data, *args, predict_noise=True)
        want = reference["ema"][name]
        if args:  # the official output: the noise head where corrupted, forces elsewhere
            out["forces"] = torch.where(mask[:, None], out["noise"], out["forces"])
        torch.testing.assert_close(out["energy"], want["energy"], atol=1e-12, rtol=0)
        torch.testing.assert_close(out["forces"], want["forces"], atol=1e-12, rtol=0)
    live = reference["live"]["float32"]["energy"].double()
    assert float((live - reference["ema"]["float64"]["energy"]).abs().max()) > 1e-5


def test_the_published_dens_layout_imports_as_a_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = dens_cli(
        "import-checkpoint", str(PUBLISHED / "eq2_dens_tiny.pt"), "oc20-2m/eqv2-dens-e12",
        "--run-dir", str(run_dir), "--scale", "mini",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "44467 parameters (ema weights)" in done.stdout
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best["imported_from"]["model_config"]["name"] == "equiformer_v2_dens"
    normalizer = best["normalizer"]
    assert normalizer["mean"] == pytest.approx(-0.7554450631141663)
    assert normalizer["std"] == pytest.approx(2.887317180633545)
    assert normalizer["force_std"] == pytest.approx(2.887317180633545)


# -- bad files: one line naming the file, exit status 2, never a traceback -----------------------
def tiny_without(*keys: str) -> dict:
    checkpoint = torch.load(PUBLISHED / "eq2_dens_tiny.pt", weights_only=True)
    for key in keys:
        section, _, inner = key.partition(".")
        if inner:
            del checkpoint[section][inner]
        else:
            del checkpoint[section]
    return checkpoint


def write_bad(kind: str, path: Path) -> None:
    """A file that is not an importable checkpoint, as a download or a user may leave one."""
    if kind == "truncated":
        data = (PUBLISHED / "eq2_dens_tiny.pt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("<html><body>404 Not Found</body></html>\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    elif kind == "plain pickle":
        path.write_bytes(pickle.dumps({"state_dict": {}}))
    elif kind == "no config":
        torch.save(tiny_without("config"), path)
    elif kind == "no state_dict":
        torch.save(tiny_without("state_dict"), path)
    elif kind == "config without model":
        torch.save(tiny_without("config.model", "config.model_attributes"), path)
    elif kind == "empty state_dict and config":
        torch.save({"state_dict": {}, "config": {}}, path)
    elif kind != "missing":
        raise ValueError(kind)


BAD_FILES = {  # kind -> what the one line says
    "truncated": "is truncated or damaged",
    "text": "is not a torch checkpoint (it starts with b'<htm'",
    "empty": "is empty (0 bytes)",
    "directory": "is not a file",
    "plain pickle": "is a plain pickle (protocol 4), not a torch.save checkpoint",
    "no config": "not a fairchem checkpoint (no 'config'",
    "no state_dict": "not a fairchem checkpoint (no 'state_dict'",
    "config without model": "the checkpoint's config has no 'model' section",
    "empty state_dict and config": "not a fairchem checkpoint (its 'state_dict' and its 'config' "
    "are empty)",
    "missing": "checkpoint not found",
}


@pytest.fixture(scope="module")
def mini_registry():
    from dens.pipeline.registry import load_registry

    return load_registry({"scale": "mini"})


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_a_bad_checkpoint_file_is_refused_in_one_line(
    tmp_path: Path,
    kind: str,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    mini_registry,
) -> None:
    """In-process (dens.pipeline.cli.main, what `python -m dens` runs, with the registry read once:
    a process per case costs seconds of CI): exit status 2, one line on stderr naming the file, no
    run written. Before, torch's exceptions came through as tracebacks (RuntimeError, EOFError,
    KeyError, IsADirectoryError) and the DeNS layout's config["model"] (a str) as an
    AttributeError."""
    from dens.pipeline import cli, commands

    monkeypatch.setattr(commands, "registry_from", lambda args: mini_registry)
    main = cli.main
    path = tmp_path / "eq2_dens_epochs_12_2M.pt"
    write_bad(kind, path)
    status = main(
        ["import-checkpoint", str(path), "oc20-2m/eqv2-dens-e12", "--run-dir",
         str(tmp_path / "run"), "--scale", "mini"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("dens: error: ")
    assert str(path) in err and BAD_FILES[kind] in err
    assert not (tmp_path / "run").exists()


def test_a_pickle_that_is_not_weights_only_is_refused_by_the_command_naming_the_global(
    tmp_path: Path,
) -> None:
    """Through `python -m dens`: the global the pickle needs is named, torch's advice to load it
    with weights_only=False is not passed on, nothing in it runs and no traceback is printed."""
    path = tmp_path / "eq2_dens_allmd.pt"
    torch.save({"state_dict": {}, "config": {"model": {}}, "where": Path("/")}, path)
    done = dens_cli(
        "import-checkpoint", str(path), "oc20-2m/eqv2-dens-e12", "--run-dir",
        str(tmp_path / "run"), "--scale", "mini",
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert f"{path}: refused: its pickle needs the global pathlib.PosixPath" in done.stderr
    assert "weights_only" not in done.stderr


# -- other fairchem 1.x EquiformerV2 layouts: OMat24 configs (class paths, stress heads) ---------
EQV2 = "fairchem.core.models.equiformer_v2."


def reference_forward(checkpoint: dict, tmp_path: Path, *args, **kwargs) -> dict:
    """Our float64 import of ``checkpoint`` on the EquiformerV2 fixture's structures, the edge
    frames rolled as fairchem 1.x rolled them for reference_outputs.pt."""
    from dens.data.batch import Batch
    from dens.data.structures import atoms_to_data
    from dens.models.equiformer_v2.import_fairchem import load_fairchem_checkpoint

    torch.save(checkpoint, tmp_path / "omat.pt")
    model, _ = load_fairchem_checkpoint(tmp_path / "omat.pt", dtype=torch.float64)
    model.edge_roll = "random"
    structures = ase.io.read(FIXTURE / "structures.extxyz", ":")
    data = Batch.from_data_list([atoms_to_data(atoms, torch.float64) for atoms in structures])
    torch.manual_seed(7)  # reference_outputs.pt meta roll_seed
    with torch.no_grad():
        return model(data, *args, **kwargs)


def test_a_dens_backbone_and_heads_named_by_class_path_import(tmp_path: Path) -> None:
    """The OMat24 DeNS configs (fairchem 1.x configs/omat24/mptrj/eqV2_*_dens_mptrj.yml) name
    the backbone and heads by class path; they are the registered eqV2 DeNS classes and give
    fairchem 1.x's outputs (float64, 1e-12). Before: refused as an unknown backbone."""
    checkpoint = torch.load(FIXTURE / "checkpoint_l4m2_equiformer_v2_dens.pt", weights_only=True)
    model = checkpoint["config"]["model"]
    model["backbone"]["model"] = EQV2 + "equiformer_v2_dens.EqV2DeNSBackbone"
    model["heads"]["energy"]["module"] = EQV2 + "equiformer_v2_dens.DeNSScalarHead"
    model["heads"]["forces"]["module"] = EQV2 + "equiformer_v2_dens.DeNSVectorHead"
    out = reference_forward(checkpoint, tmp_path, None, predict_noise=True)
    want = torch.load(FIXTURE / "reference_outputs.pt", weights_only=True)
    want = want["l4m2"]["equiformer_v2_dens"]["float64"]["plain"]
    torch.testing.assert_close(out["energy"], want["energy"], atol=1e-12, rtol=0)
    torch.testing.assert_close(out["forces"], want["force_head"], atol=1e-12, rtol=0)
    torch.testing.assert_close(out["noise"], want["noise_head"], atol=1e-12, rtol=0)


def test_the_omat24_plain_hydra_heads_import(tmp_path: Path) -> None:
    """configs/omat24/mptrj/eqV2_31M_mptrj.yml: backbone equiformer_v2_backbone, heads
    equiformer_v2_energy_head / equiformer_v2_force_head (deprecated subclasses of the scalar and
    vector heads: output_heads.energy.energy_block, output_heads.forces.force_block, as fairchem
    1.x's HydraModel names them); the monolithic fixture's weights so laid out give its outputs.
    Before: refused as unknown heads."""
    checkpoint = torch.load(FIXTURE / "checkpoint_l4m2_equiformer_v2.pt", weights_only=True)
    state = {}
    for key, value in checkpoint["state_dict"].items():
        name = key.removeprefix("module.")
        head = {"energy_block": "energy", "force_block": "forces"}.get(name.split(".")[0])
        state["module." + (f"output_heads.{head}.{name}" if head else f"backbone.{name}")] = value
    checkpoint["state_dict"] = state
    settings = checkpoint["config"]["model"]
    settings.pop("name")
    checkpoint["config"]["model"] = {
        "name": "hydra",
        "backbone": {"model": "equiformer_v2_backbone", **settings},
        "heads": {
            "energy": {"module": "equiformer_v2_energy_head"},
            "forces": {"module": EQV2 + "equiformer_v2.EquiformerV2ForceHead"},
        },
    }
    out = reference_forward(checkpoint, tmp_path)
    want = torch.load(FIXTURE / "reference_outputs.pt", weights_only=True)
    want = want["l4m2"]["equiformer_v2"]["float64"]
    torch.testing.assert_close(out["energy"], want["energy"], atol=1e-12, rtol=0)
    torch.testing.assert_close(out["forces"], want["forces"], atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            {"stress": {"module": EQV2 + "equiformer_v2_dens.DeNSRank2Head"}},
            "hydra head 'stress' (fairchem.core.models.equiformer_v2.equiformer_v2_dens."
            "DeNSRank2Head: a rank-2 (stress) head) does not map",
        ),
        (
            {"stress": {"module": "rank2_symmetric_head"}},
            "hydra head 'stress' (rank2_symmetric_head: a rank-2 (stress) head) does not map",
        ),
        (
            {"magmom": {"module": "my_lab.heads.MagmomHead"}},
            "hydra head 'magmom' (my_lab.heads.MagmomHead: an unknown head) does not map",
        ),
        (
            {"backbone": EQV2 + "escn.eSCNBackbone"},
            "hydra backbone 'fairchem.core.models.equiformer_v2.escn.eSCNBackbone' does not map",
        ),
        ({"regress_forces": False}, "regress_forces False"),
    ],
)
def test_heads_and_backbones_without_a_counterpart_are_refused_in_one_line(
    tmp_path: Path, change: dict, named: str
) -> None:
    """As the OMat24 models carry them (a stress head on every one, fairchem 1.x
    configs/omat24/*/eqV2_*.yml): one line naming the head or backbone and what maps."""
    from dens.models.equiformer_v2.import_fairchem import load_fairchem_checkpoint
    from dens.models.so3.fairchem_import import CheckpointImportError

    checkpoint = torch.load(FIXTURE / "checkpoint_l4m2_equiformer_v2_dens.pt", weights_only=True)
    model = checkpoint["config"]["model"]
    if "backbone" in change:
        model["backbone"]["model"] = change["backbone"]
    elif "regress_forces" in change:
        model["backbone"].update(change)
    else:
        model["heads"].update(change)
    torch.save(checkpoint, tmp_path / "c.pt")
    with pytest.raises(CheckpointImportError) as error:
        load_fairchem_checkpoint(tmp_path / "c.pt")
    message = str(error.value)
    assert named in message and "\n" not in message
    if "head" in named:
        assert "maps heads: eqV2_DeNS_scalar_head" in message
