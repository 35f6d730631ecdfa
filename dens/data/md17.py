"""MD17 as aselmdb splits: generated mini-MD17 (GFN2-xTB MD) and the converted original npz.

MD17 (Chmiela et al. 2017) holds ab-initio MD trajectories of 8 small molecules at 500 K.
The paper (Sec. 4.3, App. D) trains on 950 configurations, validates on 50 and tests on the
rest, with the random split of the official Equiformer code (TorchMD-Net's
`train_val_test_split`: the first 950 / next 50 / remaining indices of
`numpy.random.default_rng(seed).permutation(n_frames)`, seed 1); `split_indices` is that
split.

Both entry points write, under `out_dir`: the split folders `train/`, `val/`, `test/`, each of
one aselmdb shard (dens.layout; format: `dens.data.aselmdb`; energies in eV, forces in eV/Å,
positions in Å; row key `frame` = index of the frame in the full trajectory), `split.json`
(the frame indices of each split) and `provenance.json` (how the data were made or where they
came from).

- `dens.data.md17_generate.generate_md17`: the embedded mini-MD17, made here without
  downloads: the molecule from SMILES (RDKit, hydrogens added, 3D embedding with a fixed
  seed), pre-relaxed with GFN2-xTB (tblite), then Langevin MD at 500 K with a 0.5 fs step (the
  MD17 temperature and step), one frame every `stride` steps after `equilibration_steps`,
  energy and forces of every frame from GFN2-xTB. Deterministic for a given seed.
- `convert_md17_npz`: the original MD17 npz files (paper scale) with the paper's split.
"""

from __future__ import annotations

import json
import time
import zipfile
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator

from dens.atomic_files import file_digest
from dens.data.aselmdb import write_aselmdb
from dens.data.validation import check_frames
from dens.errors import InvalidDataError
from dens.layout import DatasetDirectory

MD17_SMILES: dict[str, str] = {
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
    "benzene": "c1ccccc1",
    "ethanol": "CCO",
    "malonaldehyde": "O=CCC=O",
    "naphthalene": "c1ccc2ccccc2c1",
    "salicylic_acid": "O=C(O)c1ccccc1O",
    "toluene": "Cc1ccccc1",
    "uracil": "O=C1C=CNC(=O)N1",
}
MD17_MOLECULES: tuple[str, ...] = tuple(MD17_SMILES)

MD17_NPZ_BASE_URL = "http://www.quantum-machine.org/gdml/data/npz/"
MD17_NPZ_FILES: dict[str, str] = {name: f"md17_{name}.npz" for name in MD17_MOLECULES} | {
    "benzene": "md17_benzene2017.npz",
    "salicylic_acid": "md17_salicylic.npz",
}

SPLITS: tuple[str, ...] = ("train", "val", "test")
KCAL_PER_MOL_IN_EV: float = units.kcal / units.mol


def _check_molecule(molecule: str) -> None:
    if molecule not in MD17_SMILES:
        raise ValueError(
            f"unknown MD17 molecule {molecule!r}; valid names: {', '.join(MD17_MOLECULES)}"
        )


def md17_npz_url(molecule: str) -> str:
    """Download address of the original MD17 npz of `molecule`."""
    _check_molecule(molecule)
    return MD17_NPZ_BASE_URL + MD17_NPZ_FILES[molecule]


def split_indices(
    n_frames: int, n_train: int, n_val: int, n_test: int | None, seed: int
) -> dict[str, np.ndarray]:
    """Random train/val/test frame indices, as the official Equiformer MD17 code splits.

    The permutation `numpy.random.default_rng(seed).permutation(n_frames)` is cut into the
    first `n_train`, the next `n_val` and the next `n_test` indices (`None`: all the rest).
    Returns {"train": int64 [n_train], "val": int64 [n_val], "test": int64 [n_test]}.
    """
    if min(n_train, n_val) < 0 or (n_test is not None and n_test < 0):
        raise ValueError(
            f"split sizes must be >= 0: n_train={n_train}, n_val={n_val}, n_test={n_test}"
        )
    rest = n_frames - n_train - n_val
    if n_test is None:
        n_test = rest
    if n_test > rest or rest < 0:
        raise ValueError(
            f"{n_frames} frames cannot hold n_train={n_train} + n_val={n_val} + n_test={n_test}"
        )
    perm = np.random.default_rng(seed).permutation(n_frames).astype(np.int64)
    bounds = np.cumsum([0, n_train, n_val, n_test])
    return {name: perm[bounds[i] : bounds[i + 1]] for i, name in enumerate(SPLITS)}


def _write_split_files(
    out_dir: Path,
    numbers: np.ndarray,
    positions: np.ndarray,
    energies: np.ndarray,
    forces: np.ndarray,
    split: dict[str, np.ndarray],
    seed: int,
    metadata: dict[str, Any],
    calculator_name: str,
) -> dict[str, Path]:
    """Write each split as a folder of one aselmdb shard (dens.layout) and `split.json`.

    numbers int [N]; positions float [F,N,3] (Å); energies float [F] (eV); forces float
    [F,N,3] (eV/Å); split: frame indices per split; `calculator_name` labels the rows'
    results (the `calculator` column of `ase db`). Returns {split: path of its folder}.
    """
    out_dir.mkdir(parents=True, exist_ok=True)

    def frames(indices: np.ndarray) -> Iterator[Atoms]:
        for frame in indices.tolist():
            atoms = Atoms(numbers=numbers, positions=positions[frame])
            atoms.calc = SinglePointCalculator(
                atoms, energy=float(energies[frame]), forces=forces[frame]
            )
            atoms.calc.name = calculator_name
            atoms.info = {"frame": frame, "sid": frame}
            yield atoms

    paths = {}
    for name in SPLITS:
        paths[name] = DatasetDirectory(out_dir).split(name)
        shard = DatasetDirectory(out_dir).shard(name, 0)
        write_aselmdb(shard, frames(split[name]), metadata | {"split": name})
    split_json = {"seed": seed, "n_frames": int(len(energies))}
    split_json |= {name: split[name].tolist() for name in SPLITS}
    (out_dir / "split.json").write_text(json.dumps(split_json) + "\n")
    return paths


def _versions(*packages: str) -> dict[str, str]:
    return {package: version(package) for package in packages}


def convert_md17_npz(
    npz_path: Path,
    out_dir: Path,
    n_train: int = 950,
    n_val: int = 50,
    seed: int = 1,
    n_test: int | None = None,
) -> dict[str, Path]:
    """Convert an original MD17 npz to aselmdb splits (paper: 950 / 50 / rest, seed 1).

    The npz holds `R` float [F,N,3] (Å), `z` int [N], `E` float [F,1] (kcal/mol) and `F`
    float [F,N,3] (kcal/mol/Å); energies and forces are converted to eV and eV/Å.
    `n_test=None` puts every remaining frame in the test split. Returns {split: path}.
    A file that is not such an npz raises InvalidDataError naming it; a molecule of fewer than
    two atoms, an element beyond dens.data.validation.SUPPORTED_MAX_Z, a non-finite or
    out-of-bounds value raises its InvalidStructureError naming the file and the frame.
    """
    npz_path = Path(npz_path)
    start = time.perf_counter()
    numbers, positions, energies, forces, theory = _read_md17_npz(npz_path)
    n_frames, n_atoms = len(positions), len(numbers)
    check_frames(numbers, positions, str(npz_path), energies=energies, forces=forces)

    needed = n_train + n_val + (n_test or 0)
    if n_frames < needed:
        raise InvalidDataError(
            f"{npz_path}: {n_frames} frames, fewer than the {needed} of the split (train "
            f"{n_train}, val {n_val}, test {n_test or 'the rest'}): not a complete MD17 "
            "trajectory; download it again"
        )
    split = split_indices(n_frames, n_train, n_val, n_test, seed)
    metadata = {"dataset": "MD17", "source": npz_path.name}
    out_dir = Path(out_dir)
    paths = _write_split_files(
        out_dir, numbers, positions, energies, forces, split, seed, metadata, "md17-dft"
    )
    provenance = {
        "dataset": "MD17",
        "source": npz_path.name,
        "source_sha256": file_digest(npz_path),
        "theory": theory,
        "n_atoms": n_atoms,
        "n_frames": n_frames,
        "seed": seed,
        "split_sizes": {name: len(split[name]) for name in SPLITS},
        "split_rule": "numpy default_rng(seed).permutation: train, val, test (Equiformer)",
        "kcal_per_mol_in_eV": KCAL_PER_MOL_IN_EV,
        "units": {"energy": "eV", "forces": "eV/Angstrom", "positions": "Angstrom"},
        "versions": _versions("ase", "numpy"),
        "wall_time_s": time.perf_counter() - start,
    }
    DatasetDirectory(out_dir).provenance.write_text(json.dumps(provenance, indent=2) + "\n")
    return paths


def _read_md17_npz(
    npz_path: Path,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str | None]:
    """(z, R, E in eV, F in eV/Å, theory or None) of an MD17 npz whose keys and shapes agree;
    anything else raises InvalidDataError naming the file."""
    try:
        with np.load(npz_path) as npz:
            missing = [key for key in ("R", "z", "E", "F") if key not in npz.files]
            if missing:
                raise InvalidDataError(
                    f"{npz_path} is not an MD17 npz: missing keys {missing} (has {npz.files})"
                )
            positions = np.asarray(npz["R"], dtype=np.float64)
            numbers = np.asarray(npz["z"])
            energies = np.asarray(npz["E"], dtype=np.float64).reshape(-1) * KCAL_PER_MOL_IN_EV
            forces = np.asarray(npz["F"], dtype=np.float64) * KCAL_PER_MOL_IN_EV
            theory = str(npz["theory"]) if "theory" in npz.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        if isinstance(error, InvalidDataError):
            raise
        raise InvalidDataError(
            f"{npz_path}: not a readable MD17 npz ({type(error).__name__}: {error}); "
            "download it again"
        ) from error
    if not np.issubdtype(numbers.dtype, np.integer):
        raise InvalidDataError(f"{npz_path}: z must hold integers, got dtype {numbers.dtype}")
    n_frames, n_atoms = len(positions), len(numbers)
    expected = {"R": (n_frames, n_atoms, 3), "E": (n_frames,), "F": (n_frames, n_atoms, 3)}
    actual = {"R": positions.shape, "E": energies.shape, "F": forces.shape}
    for key, shape in expected.items():
        if actual[key] != shape:
            raise InvalidDataError(f"{npz_path}: {key} has shape {actual[key]}, expected {shape}")
    if not n_frames:
        raise InvalidDataError(f"{npz_path}: no frames")
    return numbers, positions, energies, forces, theory
