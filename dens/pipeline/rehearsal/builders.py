"""Builders of archives laid out like the OC20/OC22/MD17 releases, small: the rehearsal's
generator (dens.pipeline.rehearsal.generate) and the converter tests (tests/data/oc_fixtures.py,
benchmarks/convert_s2ef.py) use them.

- :func:`slab_frames`: small periodic slabs (fcc(111) metal, three layers, an adsorbate) with
  OC20 tags (0 sub-surface, 1 surface, 2 adsorbate), the lower layers fixed, rattled positions,
  made-up energies and forces. ``size`` scales the slab (size 3 x 3 x 7 + 3 adsorbate atoms ~
  an OC20 system of 70 atoms).
- :func:`write_s2ef_files`: ``<stem>.extxyz.xz`` written by ASE (``Properties=species:S:1:pos:
  R:3:move_mask:L:1:tags:I:1:forces:R:3``, ``energy=``, ``pbc="T T T"``) and ``<stem>.txt.xz``
  with ``random<sid>,frame<fid>,<reference>`` per frame, both xz-compressed.
- :func:`tar_dir`: a tar of a directory, members relative to its parent (as the released
  ``s2ef_train_2M.tar`` holds ``s2ef_train_2M/s2ef_train_2M/*.xz``).
- :func:`write_legacy_lmdb`: an LMDB (subdir=False) whose values are ``pickle.dumps`` of an
  object of class ``torch_geometric.data.data.Data`` (a stand-in registered under that module
  name only while pickling) holding torch tensors, pickled as torch does (storage via
  ``torch.storage._load_from_bytes``), plus a ``length`` key, like OCP's preprocessing writes.
- :func:`write_md17_npz`: an sGDML MD17 file (``R`` [F, N, 3] Å, ``z`` [N], ``E`` [F, 1]
  kcal/mol, ``F`` [F, N, 3] kcal/mol/Å) of made-up frames around a molecule's geometry.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import lzma
import pickle
import sys
import tarfile
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ase.io
import numpy as np
from ase import Atoms
from ase.build import add_adsorbate, fcc111
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

from dens.scoped import entries_set

# ------------------------------------------------------------------------------ structures ----


def slab_frames(
    n: int, seed: int = 0, size: tuple[int, int, int] = (2, 2, 3), adsorbate: str = "CO"
) -> list[Atoms]:
    """``n`` periodic slab frames (module notes); energies are totals (eV)."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        metal = ("Cu", "Pt", "Ag")[i % 3]
        slab = fcc111(metal, size=size, vacuum=7.0)
        layers = size[2]
        per_layer = size[0] * size[1]
        molecule = Atoms(adsorbate, positions=[[0, 0, 1.2 * k] for k in range(len(adsorbate))])
        add_adsorbate(slab, molecule, 1.8, "fcc")
        slab.info.clear()
        n_slab = per_layer * layers
        tags = np.zeros(len(slab), dtype=int)
        tags[n_slab - per_layer : n_slab] = 1
        tags[n_slab:] = 2
        slab.set_tags(tags)
        slab.pbc = True
        slab.positions += rng.normal(scale=0.05, size=slab.positions.shape)
        slab.set_constraint(FixAtoms(indices=range(per_layer * (layers - 1))))
        forces = rng.normal(scale=0.3, size=(len(slab), 3))
        slab.calc = SinglePointCalculator(
            slab, energy=float(-3.5 * len(slab) + rng.normal()), forces=forces
        )
        frames.append(slab)
    return frames


def write_s2ef_files(
    directory: Path,
    stem: str,
    frames: list[Atoms],
    ids: list[tuple[int, int, float]],
    txt_lines: int | None = None,
) -> tuple[Path, Path]:
    """``<stem>.extxyz.xz`` of ``frames`` and ``<stem>.txt.xz`` of ``ids`` (sid, fid,
    reference); ``txt_lines`` keeps only that many txt lines."""
    directory.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    ase.io.write(text, frames, format="extxyz")
    extxyz = directory / f"{stem}.extxyz.xz"
    extxyz.write_bytes(lzma.compress(text.getvalue().encode()))
    lines = [f"random{sid},frame{fid},{ref!r}\n" for sid, fid, ref in ids][:txt_lines]
    txt = directory / f"{stem}.txt.xz"
    txt.write_bytes(lzma.compress("".join(lines).encode()))
    return extxyz, txt


def s2ef_archive_dir(
    root: Path, name: str, files: int, frames_per_file: int, seed: int
) -> tuple[Path, list[tuple[Atoms, tuple[int, int, float]]]]:
    """``root/<name>/<name>/{0..files-1}.extxyz.xz`` + txt (the released layout); returns the
    top directory and the (frame, (sid, fid, reference)) pairs in file order."""
    inner = root / name / name
    written = []
    rng = np.random.default_rng(seed)
    for index in range(files):
        frames = slab_frames(frames_per_file, seed=seed * 1000 + index)
        ids = [
            (int(rng.integers(0, 2_000_000)), int(rng.integers(0, 300)), float(rng.normal(-50, 5)))
            for _ in frames
        ]
        write_s2ef_files(inner, str(index), frames, ids)
        written.extend(zip(frames, ids, strict=True))
    return root / name, written


def tar_dir(directory: Path, mode: str = "w") -> bytes:
    """A tar (``mode`` "w", "w:gz", ...) of ``directory`` with members named from its parent."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        tar.add(directory, arcname=directory.name)
    return buffer.getvalue()


def md5(data: bytes) -> str:
    """The md5 hex digest of ``data``."""
    return hashlib.md5(data).hexdigest()


# -------------------------------------------------------------------------- legacy LMDBs ----


class _FakeData:
    """Pickled as ``torch_geometric.data.data.Data`` (PyG 1.x layout: fields in __dict__)."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


@contextmanager
def _as_pyg_data() -> Iterator[type]:
    """``torch_geometric.data.data.Data`` as a plain class while pickling (the real module is
    loaded first when installed; the modules are restored after)."""
    names = ("torch_geometric", "torch_geometric.data", "torch_geometric.data.data")
    try:  # pickle imports the module: the real package (when installed) must be loaded first
        importlib.import_module(names[-1])
    except ImportError:
        pass
    module = types.ModuleType(names[-1])
    cls = type("Data", (_FakeData,), {"__module__": names[-1]})
    cls.__qualname__ = "Data"
    module.Data = cls
    parents = {name: sys.modules.get(name) or types.ModuleType(name) for name in names[:-1]}
    with entries_set(sys.modules, {**parents, names[-1]: module}):
        yield cls


def legacy_records(
    frames: list[Atoms], kind: str, seed: int = 0, first_sid: int = 1000
) -> list[dict[str, Any]]:
    """Fields (torch tensors) of OCP LMDB records: kind "is2re" (pos, pos_relaxed, y_init,
    y_relaxed, ...), "is2re_test" (no relaxed labels: the owners' test LMDBs hold none),
    "s2ef_test" (no labels) or "s2ef" (y total energy, force); the systems'
    sids count from ``first_sid`` (a release's sids are unique across its sub-splits)."""
    import torch

    rng = np.random.default_rng(seed)
    records = []
    for index, atoms in enumerate(frames):
        fixed = np.zeros(len(atoms))
        fixed[atoms.constraints[0].index] = 1
        fields: dict[str, Any] = {
            "pos": torch.tensor(atoms.positions, dtype=torch.float32),
            "cell": torch.tensor(np.asarray(atoms.cell), dtype=torch.float32).view(1, 3, 3),
            "atomic_numbers": torch.tensor(atoms.numbers, dtype=torch.float32),
            "natoms": len(atoms),
            "tags": torch.tensor(atoms.get_tags(), dtype=torch.long),
            "fixed": torch.tensor(fixed, dtype=torch.float32),
            "sid": first_sid + index,
        }
        if kind.startswith("is2re"):
            relaxed = atoms.positions + rng.normal(scale=0.1, size=atoms.positions.shape)
            fields["y_init"] = float(rng.normal(2.0, 1.0))
            y_relaxed = float(rng.normal(-1.0, 1.0))
            if kind == "is2re":  # "is2re_test": the relaxed labels are the server's
                fields["pos_relaxed"] = torch.tensor(relaxed, dtype=torch.float32)
                fields["y_relaxed"] = y_relaxed
        else:
            fields["fid"] = torch.tensor([index % 7])
        if kind == "s2ef":
            fields["y"] = float(atoms.get_potential_energy())
            fields["force"] = torch.tensor(
                atoms.get_forces(apply_constraint=False), dtype=torch.float32
            )
        records.append(fields)
    return records


def write_legacy_lmdb(path: Path, records: list[dict[str, Any] | Any]) -> Path:
    """An OCP-style LMDB of pickled Data records (dicts) or of arbitrary objects as given."""
    import lmdb

    path.parent.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(path), subdir=False, map_size=1 << 30, meminit=False)
    with _as_pyg_data() as cls, env.begin(write=True) as txn:
        for index, record in enumerate(records):
            value = cls(**record) if isinstance(record, dict) else record
            txn.put(str(index).encode("ascii"), pickle.dumps(value, protocol=3))
        txn.put(b"length", pickle.dumps(len(records), protocol=3))
    env.sync()
    env.close()
    Path(str(path) + "-lock").unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------------------- MD17 ----


def write_md17_npz(path: Path, molecule: Atoms, frames: int, seed: int = 0) -> Path:
    """An MD17 npz of ``frames`` made-up frames: ``molecule``'s positions rattled (0.05 Å),
    energies (kcal/mol) and forces (kcal/mol/Å) drawn around plausible values."""
    rng = np.random.default_rng(seed)
    atoms = len(molecule)
    positions = molecule.positions[None] + rng.normal(scale=0.05, size=(frames, atoms, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        np.savez(
            handle,
            R=positions,
            z=molecule.numbers.astype(np.int64),
            E=rng.normal(-97000.0, 5.0, size=(frames, 1)),
            F=rng.normal(scale=30.0, size=(frames, atoms, 3)),
        )
    return path
