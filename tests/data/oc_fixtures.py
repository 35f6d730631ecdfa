"""Fixture builders for the OC20/OC22 converters (tests/data/test_oc_converters.py,
benchmarks/convert_s2ef.py): S2EF archives laid out like the released ones, legacy LMDBs of
pickled Data records, a catalog pointing at a local HTTP server, and that server.

- :func:`slab_frames`: small periodic slabs (fcc(111) metal, three layers, an adsorbate) with
  OC20 tags (0 sub-surface, 1 surface, 2 adsorbate), the lower layers fixed, rattled positions,
  made-up energies and forces. ``size`` scales the slab (size 3 x 3 x 7 + 3 adsorbate atoms ~
  an OC20 system of 70 atoms).
- :func:`write_s2ef_files`: ``<stem>.extxyz.xz`` written by ASE (``Properties=species:S:1:pos:
  R:3:move_mask:L:1:tags:I:1:forces:R:3``, ``energy=``, ``pbc="T T T"``) and ``<stem>.txt.xz``
  with ``random<sid>,frame<fid>,<reference>`` per frame, both xz-compressed.
- :func:`tar_dir`: a plain tar of a directory, members relative to its parent (as the released
  ``s2ef_train_2M.tar`` holds ``s2ef_train_2M/s2ef_train_2M/*.xz``).
- :func:`write_legacy_lmdb`: an LMDB (subdir=False) whose values are ``pickle.dumps`` of an
  object of class ``torch_geometric.data.data.Data`` (a stand-in registered under that module
  name only while pickling) holding torch tensors, pickled as torch does (storage via
  ``torch.storage._load_from_bytes``), plus a ``length`` key, like OCP's preprocessing writes.
- :class:`Served` / :func:`serve`: a ThreadingHTTPServer on 127.0.0.1 in a thread (as in
  test_download.py).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import lzma
import pickle
import shutil
import sys
import tarfile
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import ase.io
import numpy as np
import yaml
from ase import Atoms
from ase.build import add_adsorbate, fcc111
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

REPO = Path(__file__).resolve().parents[2]


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
    return hashlib.md5(data).hexdigest()


# -------------------------------------------------------------------------- legacy LMDBs ----


class _FakeData:
    """Pickled as ``torch_geometric.data.data.Data`` (PyG 1.x layout: fields in __dict__)."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


class Exploit:
    """Pickles as a call to ``os.system(command)``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, (self.command,))


@contextmanager
def _as_pyg_data() -> Iterator[type]:
    names = ("torch_geometric", "torch_geometric.data", "torch_geometric.data.data")
    try:  # pickle imports the module: the real package (when installed) must be loaded first
        importlib.import_module(names[-1])
    except ImportError:
        pass
    saved = {name: sys.modules.get(name) for name in names}
    for name in names[:-1]:
        sys.modules.setdefault(name, types.ModuleType(name))
    module = types.ModuleType(names[-1])
    cls = type("Data", (_FakeData,), {"__module__": names[-1]})
    cls.__qualname__ = "Data"
    module.Data = cls
    sys.modules[names[-1]] = module
    try:
        yield cls
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def legacy_records(frames: list[Atoms], kind: str, seed: int = 0) -> list[dict[str, Any]]:
    """Fields (torch tensors) of OCP LMDB records: kind "is2re" (pos, pos_relaxed, y_init,
    y_relaxed, ...), "s2ef_test" (no labels) or "s2ef" (y total energy, force)."""
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
            "sid": 1000 + index,
        }
        if kind == "is2re":
            relaxed = atoms.positions + rng.normal(scale=0.1, size=atoms.positions.shape)
            fields["pos_relaxed"] = torch.tensor(relaxed, dtype=torch.float32)
            fields["y_init"] = float(rng.normal(2.0, 1.0))
            fields["y_relaxed"] = float(rng.normal(-1.0, 1.0))
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


# ------------------------------------------------------------------------------- catalog ----


def write_catalog(root: Path, entries: dict[str, dict[str, Any]]) -> Path:
    """A repository root with config/archives.yaml = ``entries`` and the real schema."""
    (root / "config").mkdir(parents=True, exist_ok=True)
    schemas = root / "workflow" / "schemas"
    schemas.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "workflow/schemas/archives.schema.yaml", schemas)
    (root / "config" / "experiments.yaml").write_text("{}\n")
    (root / "config" / "archives.yaml").write_text(
        yaml.safe_dump({"archives": entries}, sort_keys=False)
    )
    return root


def catalog_entry(url: str, fmt: str, data: bytes, dataset: dict, **extra: Any) -> dict:
    entry = {
        "url": url,
        "format": fmt,
        "checksum": {"algorithm": "md5", "digest": md5(data)},
        "checksum_source": "test fixture",
        "payload": "test fixture",
        "size": None,
        "dataset": dataset,
    }
    entry.update(extra)
    return entry


# -------------------------------------------------------------------------------- server ----


@dataclass
class Served:
    port: int = 0
    files: dict[str, bytes] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        data = self.server.served.files.get(self.path.lstrip("/"))  # type: ignore[attr-defined]
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def serve() -> Iterator[Served]:
    """A file server on 127.0.0.1 (put bytes into ``served.files[name]``)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.served = Served(port=httpd.server_address[1])  # type: ignore[attr-defined]
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield httpd.served  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
