"""mini-OC20 / mini-OC22 generated with EMT (dens.data.catalysts) at the smoke scale's sizes:
the splits of config/datasets.yaml, disjoint by system, held-out metals and adsorbates, fixed
atoms and tags as in OC20, MD frames flagged, OC20's energy referencing recomputed with EMT,
determinism, and files that dens, fairchem-core and ase.db all read."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase import Atoms
from ase.build import fcc100, fcc111
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.optimize import LBFGS

from dens.config_files import validate
from dens.data import catalysts
from dens.data.aselmdb import AseLmdbDataset
from dens.data.catalyst_systems import OC20, OC22
from dens.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
DATASETS = yaml.safe_load((REPO / "config/datasets.yaml").read_text())["datasets"]
SMOKE = yaml.safe_load((REPO / "config/scales/smoke.yaml").read_text())["data"]


def settings(name: str, **sizes) -> dict:
    info = DATASETS[name]
    return {**copy.deepcopy(info), "name": name, **SMOKE[info["family"]], **sizes}


def split_names(name: str) -> list[str]:
    names = []
    for value in DATASETS[name]["splits"].values():
        names += [value] if isinstance(value, str) else value
    return names


def rows(path: Path) -> list:
    """The ase.db rows of a split folder (its shards in order)."""
    from dens.data.split_folder import split_rows

    return [row for _, row in split_rows(path)]


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("catalysts")
    dirs = {}
    for name, prepare in (
        ("oc20-2m", catalysts.prepare_oc20_generated),
        ("oc20-all-md", catalysts.prepare_oc20_generated),
        ("oc22", catalysts.prepare_oc22_generated),
    ):
        dirs[name] = root / name
        prepare(settings(name), dirs[name], 1)
    return dirs


@pytest.fixture(scope="module")
def data(generated) -> dict[str, dict[str, list]]:
    return {
        name: {split: rows(out / split) for split in split_names(name)}
        for name, out in generated.items()
    }


@pytest.mark.parametrize("name", ["oc20-2m", "oc20-all-md", "oc22"])
def test_writes_exactly_the_splits_and_provenance_last(generated, data, name):
    out = generated[name]
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted([*split_names(name), "provenance.json"])  # manifests: prepare_dataset
    assert all(
        [p.name for p in (out / s).iterdir()] == ["shard-000000.aselmdb"] for s in split_names(name)
    )
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["method"] == "EMT"
    assert set(provenance["splits"]) == set(split_names(name))
    for split, split_rows in data[name].items():
        assert provenance["splits"][split]["rows"] == len(split_rows) > 0
        assert (out / "provenance.json").stat().st_mtime_ns >= (
            out / split / "shard-000000.aselmdb"
        ).stat().st_mtime_ns
    assert provenance["versions"]["ase"] and provenance["relaxation"]["fmax_eV_per_A"] == 0.05


@pytest.mark.parametrize("name", ["oc20-all-md", "oc22"])
def test_splits_are_disjoint_by_system(data, name):
    seen: dict[int, str] = {}
    for split, split_rows in data[name].items():
        for sid in {row.sid for row in split_rows}:
            assert sid not in seen, f"sid {sid} in {seen.get(sid)} and {split}"
            seen[sid] = split
        for row in split_rows:
            assert row.data["sid"] == row.sid


def components(split_rows) -> tuple[set[str], set[str]]:
    metals = {row.metal for row in split_rows}
    adsorbates = {a for row in split_rows for a in row.adsorbate.split("+")}
    return metals, adsorbates


def test_oc20_held_out_metals_and_adsorbates(data):
    splits = data["oc20-all-md"]
    train_metals, train_ads = components(splits["train"])
    metals, ads = components(splits["val_id"])
    assert metals <= set(OC20.metals) and ads <= set(OC20.adsorbates)
    assert train_metals <= set(OC20.metals)
    assert train_ads <= set(OC20.adsorbates)
    metals, ads = components(splits["val_ood_cat"])
    assert not metals & train_metals and ads <= set(OC20.adsorbates)
    metals, ads = components(splits["val_ood_ads"])
    assert not ads & train_ads and metals <= set(OC20.metals)
    metals, ads = components(splits["val_ood_both"])
    assert not metals & train_metals and not ads & train_ads


def test_oc22_held_out_metals_or_adsorbates(data):
    splits = data["oc22"]
    train_metals, train_ads = components(splits["train"])
    for split in ("val_ood", "s2ef_test_ood", "is2re_test_ood"):
        for row in splits[split]:
            metal, ads = components([row])
            assert not metal <= train_metals or not ads <= train_ads, (split, row.adsorbate)
            assert row.metal in OC22.ood_metals or ads & set(OC22.ood_adsorbates)
    for split in ("val_id", "s2ef_test_id", "is2re_test_id"):
        metals, ads = components(splits[split])
        assert metals <= set(OC22.metals) and ads <= set(OC22.adsorbates)


@pytest.mark.parametrize("name", ["oc20-all-md", "oc22"])
def test_tags_and_fixed_atoms(data, name):
    layers = SMOKE[name[:4]]["layers"]
    for split_rows in data[name].values():
        for row in split_rows:
            atoms = row.toatoms()
            tags = atoms.get_tags()
            assert atoms.pbc.all() and atoms.cell.rank == 3
            adsorbate = tags == 2
            metal = np.isin(atoms.numbers, [1, 6, 7, 8], invert=True)
            assert np.array_equal(adsorbate, ~metal)  # adsorbate atoms: H, C, N, O
            assert adsorbate[-1] and set(tags[metal]) == {0, 1}
            # the top two layers tag 1, the rest 0
            z = atoms.positions[metal, 2]
            n_per_layer = metal.sum() // layers
            assert (tags[metal] == 1).sum() == 2 * n_per_layer
            assert z[tags[metal] == 0].max() < z[tags[metal] == 1].min()
            fixed = np.zeros(len(atoms), dtype=bool)
            for constraint in atoms.constraints:
                assert isinstance(constraint, FixAtoms)
                fixed[constraint.index] = True
            if name == "oc22":
                assert not atoms.constraints
            else:
                assert np.array_equal(fixed, tags == 0) and not fixed[adsorbate].any()


def test_md_frames_only_in_all_md_train(generated, data):
    provenance = json.loads((generated["oc20-all-md"] / "provenance.json").read_text())
    md_train = data["oc20-all-md"]["train"]
    flagged = [row for row in md_train if row.md_split]
    assert len(flagged) == provenance["splits"]["train"]["md_frames"] > 0
    for name, splits in data.items():
        for split, split_rows in splits.items():
            if (name, split) != ("oc20-all-md", "train"):
                assert not any(row.get("md_split", False) for row in split_rows), (name, split)
    # the relaxation frames are oc20-2m's train, row for row; MD frames follow them per system
    relaxation = [row for row in md_train if not row.md_split]
    plain = data["oc20-2m"]["train"]
    assert len(relaxation) == len(plain)
    for a, b in zip(relaxation, plain, strict=True):
        assert (a.sid, a.fid, a.energy) == (b.sid, b.fid, b.energy)
        assert np.array_equal(a.positions, b.positions)
    for row in flagged:
        last = max(r.fid for r in relaxation if r.sid == row.sid)
        assert row.fid > last


def test_deterministic_and_independent_of_processes(generated, data, tmp_path):
    for name in ("oc20-all-md", "oc22"):
        prepare = catalysts.prepare_oc22_generated if name == "oc22" else None
        prepare = prepare or catalysts.prepare_oc20_generated
        prepare(settings(name), tmp_path / name, 2)
        for split, split_rows in data[name].items():
            again = rows(tmp_path / name / split)
            assert len(again) == len(split_rows)
            for a, b in zip(split_rows, again, strict=True):
                assert (a.sid, a.fid, a.energy) == (b.sid, b.fid, b.energy)
                assert np.array_equal(a.positions, b.positions)
                assert np.array_equal(a.forces, b.forces)
    # another seed, other systems
    prepare(settings("oc22", seed=1), tmp_path / "seed1", 1)
    other = rows(tmp_path / "seed1" / "train")
    assert other[0].energy != data["oc22"]["train"][0].energy


def relaxed_energy(atoms: Atoms, fmax: float = 0.05) -> float:
    atoms.calc = EMT()
    LBFGS(atoms, maxstep=0.2, logfile=None).run(fmax=fmax, steps=500)
    return atoms.get_potential_energy()


def test_oc20_adsorption_energy_recomputed_with_emt(data):
    row = data["oc20-2m"]["val_id"][5]
    atoms = row.toatoms()
    atoms.calc = EMT()
    total = atoms.get_potential_energy()
    assert total == pytest.approx(row.total_energy, abs=1e-9)
    np.testing.assert_allclose(atoms.get_forces(apply_constraint=False), row.forces, atol=1e-9)
    # the clean slab: same metal, facet and size, lower layer fixed, relaxed with EMT
    size = (SMOKE["oc20"]["surface_cell"],) * 2 + (SMOKE["oc20"]["layers"],)
    build = {"fcc111": fcc111, "fcc100": fcc100}[row.facet]
    slab = build(row.metal, size, vacuum=7.0)
    slab.pbc = True
    slab.set_constraint(FixAtoms(mask=slab.get_tags() > 2))
    e_slab = relaxed_energy(slab)
    # gas references: H = H2/2, O = H2O - H2, N = N2/2, C = CO - H2O + H2
    gas = {
        "H2": relaxed_energy(Atoms("H2", positions=[(0, 0, 0), (0, 0, 0.74)]), 0.01),
        "H2O": relaxed_energy(
            Atoms("OH2", positions=[(0, 0, 0), (0.76, 0, 0.59), (-0.76, 0, 0.59)]), 0.01
        ),
        "N2": relaxed_energy(Atoms("N2", positions=[(0, 0, 0), (0, 0, 1.1)]), 0.01),
        "CO": relaxed_energy(Atoms("CO", positions=[(0, 0, 0), (0, 0, 1.13)]), 0.01),
    }
    per_element = {
        "H": gas["H2"] / 2,
        "O": gas["H2O"] - gas["H2"],
        "N": gas["N2"] / 2,
        "C": gas["CO"] - gas["H2O"] + gas["H2"],
    }
    adsorbate = atoms[atoms.get_tags() == 2].get_chemical_symbols()
    reference = e_slab + sum(per_element[s] for s in adsorbate)
    assert row.reference_energy == pytest.approx(reference, abs=2e-3)
    assert row.energy == pytest.approx(total - reference, abs=2e-3)


def test_oc22_labels_are_total_energies(data):
    for row in data["oc22"]["val_ood"][:3]:
        atoms = row.toatoms()
        atoms.calc = EMT()
        assert row.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-9)
        assert row.energy == row.total_energy and row.reference_energy == 0.0


@pytest.mark.parametrize(
    ("name", "split"), [("oc20-all-md", "is2re_test"), ("oc22", "is2re_test_ood")]
)
def test_is2re_rows(data, name, split):
    split_rows = data[name][split]
    assert len(split_rows) == SMOKE[name[:4]]["relax_systems"]
    assert len({row.sid for row in split_rows}) == len(split_rows)
    for row in split_rows:
        atoms = row.toatoms()
        relaxed = atoms.copy()
        relaxed.positions = row.data["pos_relaxed"]
        relaxed.calc = atoms.calc = EMT()
        assert row.energy == pytest.approx(atoms.get_potential_energy() - row.reference_energy)
        assert row.y_relaxed == pytest.approx(relaxed.get_potential_energy() - row.reference_energy)
        assert row.y_relaxed <= row.energy + 1e-6
        assert row.forces.shape == (len(atoms), 3)


@pytest.mark.parametrize("name", ["oc20-all-md", "oc22"])
def test_readable_by_dens_dataset(generated, name):
    for split in split_names(name):
        dataset = AseLmdbDataset(generated[name] / split)
        item = dataset[0]
        assert item.cell.shape == (1, 3, 3) and item.pbc.all()
        assert set(item.tags.tolist()) == {0, 1, 2}
        assert bool(item.fixed.any()) == (name != "oc22")
        if split == "train" and name == "oc20-all-md":
            assert bool(dataset[len(dataset) - 1].md_split)


def test_readable_by_fairchem_and_ase_db(generated, data):
    from fairchem.core.datasets import AseDBDataset

    path = generated["oc20-all-md"] / "val_id"
    dataset = AseDBDataset({"src": str(path)})
    assert len(dataset) == len(data["oc20-all-md"]["val_id"])
    row = data["oc20-all-md"]["val_id"][3]
    atoms = dataset.get_atoms(3)
    assert atoms.info["sid"] == row.sid
    assert np.array_equal(atoms.get_tags(), row.toatoms().get_tags())
    assert [type(c) for c in atoms.constraints] == [FixAtoms]
    np.testing.assert_allclose(atoms.cell, row.cell)
    assert atoms.get_potential_energy() == pytest.approx(row.energy)
    relax = AseDBDataset({"src": str(generated["oc20-all-md"] / "is2re_test")})
    assert relax.get_atoms(0).info["pos_relaxed"].shape == (len(relax.get_atoms(0)), 3)
    assert dataset[0].sid  # the fairchem graph conversion


def test_unknown_split_and_missing_sizes_are_refused(tmp_path):
    bad = settings("oc20-2m")
    bad["splits"] = {"train": "train", "val": ["val_ood"]}
    with pytest.raises(ConfigError, match="val_ood"):
        catalysts.prepare_oc20_generated(bad, tmp_path, 1)
    with pytest.raises(ConfigError, match="train_systems"):
        incomplete = {k: v for k, v in settings("oc22").items() if k != "train_systems"}
        catalysts.prepare_oc22_generated(incomplete, tmp_path, 1)


def test_scale_schema(tmp_path):
    for scale in ("smoke", "mini", "paper"):
        document = yaml.safe_load((REPO / f"config/scales/{scale}.yaml").read_text())
        validate(document, "scale", scale, REPO)
    document = yaml.safe_load((REPO / "config/scales/smoke.yaml").read_text())
    document["data"]["oc20"]["n_frames"] = 3
    with pytest.raises(ConfigError, match="n_frames"):
        validate(document, "scale", "smoke", REPO)
    del document["data"]["oc20"]["n_frames"]
    del document["data"]["oc22"]["layers"]
    with pytest.raises(ConfigError, match="layers"):
        validate(document, "scale", "smoke", REPO)
