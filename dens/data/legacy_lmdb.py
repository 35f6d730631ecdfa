"""The LMDBs of the OC20 S2EF test, OC20 IS2RE and OC22 releases, read without running their code.

Those files hold, per key, ``pickle.dumps(data)`` of a torch_geometric ``Data`` object of an old
library version (OCP's preprocessing scripts): ``torch_geometric.data.data.Data`` whose
``__dict__`` holds the fields (PyG 1.x), or whose ``_store`` (a ``GlobalStorage``) holds them
in ``_mapping`` (PyG 2.x). A tensor pickles as ``torch._utils._rebuild_tensor_v2(storage,
offset, size, stride, requires_grad, hooks)`` whose storage pickles as
``torch.storage._load_from_bytes(blob)``, ``blob`` being a legacy-format ``torch.save`` of the
storage alone.

:class:`RestrictedUnpickler` builds only what those records need: a stand-in for ``Data`` and
``GlobalStorage`` that keeps their state as a dict, tensors rebuilt by functions written here
(the storage blob read by ``torch.load(weights_only=True)``, torch's own restricted loader),
numpy arrays, ``collections.OrderedDict`` and plain containers. Any other global (``os.system``,
``builtins.eval``, ``subprocess.Popen``, ...) raises :class:`dens.errors.DataError`
("refusing to unpickle posix.system ...") before it is called, so a downloaded file never runs
code. Persistent ids (``torch.save`` zip format) are refused the same way.

:func:`record_to_row` turns one record into an aselmdb row ``(atoms, key_value_pairs, data)``;
:func:`write_rows` writes rows with ``ase.db`` directly (rows may lack forces or energy, which
dens.data.aselmdb.write_aselmdb requires).
"""

from __future__ import annotations

import collections
import io
import pickle
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

from dens.errors import DataError

Row = tuple[Atoms, dict[str, Any], dict[str, Any]]


# ------------------------------------------------------------------------------ stand-ins ----


class _State:
    """Keeps the pickled state of a known class as a plain dict, nothing more."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots dict)
            merged: dict[str, Any] = {}
            for part in state:
                if isinstance(part, Mapping):
                    merged.update(part)
            state = merged
        if not isinstance(state, Mapping):
            raise DataError(f"unexpected pickled state of type {type(state).__name__}")
        self.state = dict(state)


class LegacyData(_State):
    """Stand-in for ``torch_geometric.data.data.Data``: :meth:`fields` gives its fields."""

    def fields(self) -> dict[str, Any]:
        store = self.state.get("_store")
        if isinstance(store, _State):  # PyG 2.x: fields in GlobalStorage._mapping
            mapping = store.state.get("_mapping", {})
            return {k: v for k, v in mapping.items() if isinstance(k, str)}
        return {k: v for k, v in self.state.items() if isinstance(k, str) and k[0] != "_"}


class LegacyStorage(_State):
    """Stand-in for ``torch_geometric.data.storage.GlobalStorage``."""


class _Inert(_State):
    """Stand-in for PyG 2.x attribute descriptors (``DataEdgeAttr``, ``DataTensorAttr``)."""


def _load_from_bytes(blob: bytes) -> Any:
    """A storage pickled by ``torch.storage._StorageBase.__reduce__``: a torch.save'd blob,
    read with torch's restricted loader."""
    import torch

    if not isinstance(blob, bytes | bytearray):
        raise DataError(f"torch.storage._load_from_bytes got {type(blob).__name__}, not bytes")
    try:
        return torch.load(io.BytesIO(bytes(blob)), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        raise DataError(f"refusing a tensor storage blob: {err}") from err


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, *_: Any) -> Any:
    """``torch._utils._rebuild_tensor(_v2)`` for a CPU storage: a view, checked to fit."""
    import torch

    if not isinstance(storage, torch.storage.TypedStorage | torch.UntypedStorage):
        raise DataError(f"tensor rebuild got {type(storage).__name__}, not a torch storage")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or any(s < 0 for s in size) or int(offset) < 0:
        raise DataError(f"invalid tensor layout: size {size}, stride {stride}, offset {offset}")
    extent = int(offset) + sum((n - 1) * s for n, s in zip(size, stride, strict=True) if n > 0)
    with warnings.catch_warnings():  # TypedStorage is deprecated, but it is what the blob holds
        warnings.simplefilter("ignore", UserWarning)
        if all(size) and extent >= storage.size():
            raise DataError(f"tensor of size {size} does not fit its storage of {storage.size()}")
        tensor = torch.empty(0, dtype=storage.dtype)
        return tensor.set_(storage, int(offset), size, stride)


def _rebuild_parameter(data: Any, requires_grad: bool, hooks: Any, *_: Any) -> Any:
    return data


def _object_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` (pickle protocols 0 and 1), for the stand-ins only."""
    if not (isinstance(cls, type) and issubclass(cls, _State)):
        raise DataError(f"refusing to unpickle copyreg._reconstructor of {cls!r}")
    return cls.__new__(cls)


def _torch_size(*args: Any) -> tuple[int, ...]:
    return tuple(int(x) for x in (args[0] if args else ()))


def _numpy_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise DataError(f"refusing to reconstruct a numpy array of type {subtype!r}")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _numpy_scalar(dtype: Any, raw: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(raw, bytes):
        raise DataError(f"refusing numpy scalar of dtype {dtype!r}")
    return np.frombuffer(raw, dtype=dtype, count=1)[0]


# module -> name -> what the unpickler builds instead
_ALLOWED: dict[str, dict[str, Any]] = {
    "torch_geometric.data.data": {
        "Data": LegacyData,
        "DataEdgeAttr": _Inert,
        "DataTensorAttr": _Inert,
    },
    "torch_geometric.data.storage": {"GlobalStorage": LegacyStorage},
    "torch._utils": {
        "_rebuild_tensor_v2": _rebuild_tensor,
        "_rebuild_tensor": _rebuild_tensor,
        "_rebuild_parameter": _rebuild_parameter,
    },
    "torch.storage": {"_load_from_bytes": _load_from_bytes},
    "torch": {"Size": _torch_size},
    "collections": {"OrderedDict": collections.OrderedDict},
    "copyreg": {"_reconstructor": _object_reconstructor},
    "builtins": {"object": object, "set": set, "frozenset": frozenset},
    "__builtin__": {"set": set},
    "numpy": {"ndarray": np.ndarray, "dtype": np.dtype},
    "numpy.core.multiarray": {"_reconstruct": _numpy_reconstruct, "scalar": _numpy_scalar},
    "numpy._core.multiarray": {"_reconstruct": _numpy_reconstruct, "scalar": _numpy_scalar},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles OCP LMDB records; every global outside the known few raises DataError."""

    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        builder = _ALLOWED.get(module, {}).get(name)
        if builder is None:
            if module == "torch" and name.endswith("Storage"):
                import torch

                cls = getattr(torch, name, None)
                if isinstance(cls, type):
                    return cls
            raise DataError(
                f"refusing to unpickle {module}.{name} in {self.source}: not one of the "
                "classes an OC20/OC22 LMDB record holds; the file is not used"
            )
        return builder

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(
            f"refusing to unpickle a persistent id in {self.source}: OCP LMDB records are "
            "plain pickles"
        )


def safe_loads(blob: bytes, source: str) -> Any:
    """Unpickle ``blob`` with :class:`RestrictedUnpickler`; ``source`` names it in errors."""
    try:
        return RestrictedUnpickler(io.BytesIO(blob), source).load()
    except DataError:
        raise
    except Exception as err:  # truncated or malformed pickle, bad tensor blob, ...
        raise DataError(
            f"{source}: damaged record ({type(err).__name__}: {err}); extract the archive again"
        ) from err


# --------------------------------------------------------------------------------- reading ----


def _is_record_key(key: bytes) -> bool:
    return key.isdigit()


def count_records(path: Path) -> int:
    """Records (digit keys) of one LMDB file, without unpickling anything."""
    env = _open(path)
    try:
        with env.begin() as txn:
            return sum(1 for key in txn.cursor().iternext(values=False) if _is_record_key(key))
    finally:
        env.close()


def _open(path: Path) -> Any:
    import lmdb

    try:
        return lmdb.open(
            str(path), subdir=False, readonly=True, lock=False, readahead=True, meminit=False
        )
    except lmdb.Error as err:
        raise DataError(f"{path}: not a readable LMDB ({err}); extract the archive again") from err


def iter_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(key, fields) of each record of one legacy LMDB file, in key order (0, 1, 2, ...).
    Non-digit keys (``length``) are skipped without unpickling them."""
    path = Path(path)
    env = _open(path)
    try:
        with env.begin() as txn:
            keys = sorted(int(k) for k in txn.cursor().iternext(values=False) if _is_record_key(k))
            for key in keys:
                source = f"{path} key {key}"
                obj = safe_loads(txn.get(str(key).encode("ascii")), source)
                if not isinstance(obj, LegacyData):
                    raise DataError(f"{source}: expected a Data record, got {type(obj).__name__}")
                yield key, obj.fields()
    finally:
        env.close()


# ---------------------------------------------------------------------------------- rows ----


def _array(value: Any) -> np.ndarray:
    if hasattr(value, "numpy"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _scalar(value: Any) -> Any:
    array = _array(value).reshape(-1)
    if array.size != 1:
        raise ValueError(f"expected one value, got {array.size}")
    item = array[0].item()
    return item


def _sid(value: Any) -> int | str:
    if isinstance(value, str | int):
        return value
    return _scalar(value)


def record_to_row(fields: Mapping[str, Any], source: str, **extra: Any) -> Row:
    """One legacy record as an aselmdb row.

    The initial structure (``pos``, ``atomic_numbers``, ``cell``, pbc True, ``tags``, FixAtoms
    of ``fixed``); energy ``y_init`` (IS2RE) or ``y`` (S2EF) and forces ``force`` where present;
    key-value pairs ``sid``, ``fid``, ``y_relaxed`` where present, plus ``extra``; row data
    ``sid`` and ``pos_relaxed`` where present.
    """
    try:
        numbers = _array(fields["atomic_numbers"]).astype(int).reshape(-1)
        positions = _array(fields["pos"]).astype(float).reshape(-1, 3)
        cell = _array(fields["cell"]).astype(float).reshape(3, 3)
        atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True)
        if "tags" in fields:
            atoms.set_tags(_array(fields["tags"]).astype(int).reshape(-1))
        if "fixed" in fields:
            fixed = _array(fields["fixed"]).reshape(-1).astype(bool)
            atoms.set_constraint(FixAtoms(mask=fixed))
        results: dict[str, Any] = {}
        for key in ("y_init", "y"):
            if key in fields and fields[key] is not None:
                results["energy"] = float(_scalar(fields[key]))
                break
        if fields.get("force") is not None:
            results["forces"] = _array(fields["force"]).astype(float).reshape(-1, 3)
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        key_value_pairs: dict[str, Any] = {}
        data: dict[str, Any] = {}
        if "sid" in fields:
            key_value_pairs["sid"] = data["sid"] = _sid(fields["sid"])
        if "fid" in fields:
            key_value_pairs["fid"] = int(_scalar(fields["fid"]))
        if fields.get("y_relaxed") is not None:
            key_value_pairs["y_relaxed"] = float(_scalar(fields["y_relaxed"]))
        if fields.get("pos_relaxed") is not None:
            data["pos_relaxed"] = _array(fields["pos_relaxed"]).astype(float).reshape(-1, 3)
        key_value_pairs.update(extra)
    except (KeyError, ValueError, TypeError) as err:
        raise DataError(f"{source}: record cannot be read as a structure ({err!r})") from err
    if len(positions) != len(numbers):
        raise DataError(f"{source}: {len(positions)} positions for {len(numbers)} atoms")
    return atoms, key_value_pairs, data


def read_legacy_rows(path: Path, **extra: Any) -> Iterator[Row]:
    """The rows (:func:`record_to_row`) of one legacy LMDB file."""
    for key, fields in iter_records(path):
        yield record_to_row(fields, f"{path} key {key}", **extra)


# --------------------------------------------------------------------------------- writer ----
# A deliberately small writer with ase.db directly: dens.data.aselmdb.write_aselmdb requires
# energy and forces on every row, which test and IS2RE records do not have.


def write_rows(path: Path, rows: Iterable[Row], metadata: Mapping[str, Any] | None = None) -> int:
    """Write ``(atoms, key_value_pairs, data)`` rows as a new aselmdb file (replacing one) in a
    single LMDB transaction; returns the number of rows."""
    import ase.db

    path = Path(path)
    if path.suffix != ".aselmdb":
        raise ValueError(f"aselmdb path must end in .aselmdb: {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + "-lock")
    path.unlink(missing_ok=True)
    lock.unlink(missing_ok=True)
    db = ase.db.connect(path)
    count = 0
    with db:
        for atoms, key_value_pairs, data in rows:
            db.write(atoms, key_value_pairs=key_value_pairs, data=data or None)
            count += 1
        if metadata:
            db.metadata = dict(metadata)
    lock.unlink(missing_ok=True)
    return count
