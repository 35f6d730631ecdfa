"""One structure (`Data`) and a batch of structures (`Batch`): what every dens model reads.

A `Data` is a set of named tensors, read and set as attributes (``data.pos``), whose first axis
runs either over the structure's atoms (pos [N, 3], atomic_numbers [N], fixed [N], forces
[N, 3], tags [N]) or over the structure itself (natoms [1], md_split [1], energy [1], cell
[1, 3, 3], pbc [1, 3]); dens.data.structures lists the fields. A `Batch` of B structures
concatenates every field along its first axis (atoms of structure 0 first) and adds
``batch`` [N]: the structure index of each atom. This is the layout of torch_geometric's
``Data`` and ``Batch`` for structures without edges (models build their graphs themselves),
without importing torch_geometric: in a process that had imported torch and e3nn already,
``import torch_geometric.data`` took another 0.87 s (torch_geometric 2.8.1, measured), in every
pipeline job.

A field that is missing raises AttributeError, so ``getattr(data, "cell", None)`` tells a
molecule from a periodic structure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


class Data:
    """One structure: named tensors as attributes (module notes). ``Data(pos=..., ...)``."""

    def __init__(self, **fields: Tensor) -> None:
        for name, value in fields.items():
            if not isinstance(value, Tensor):
                raise TypeError(f"field {name!r} must be a tensor, got {type(value).__name__}")
        self.__dict__.update(fields)

    def keys(self) -> list[str]:
        """The field names, in the order they were set."""
        return list(self.__dict__)

    def __contains__(self, name: str) -> bool:
        return name in self.__dict__

    @property
    def num_nodes(self) -> int:
        """N, the number of atoms (the length of ``pos``)."""
        return self.pos.shape[0]

    def _new(self, fields: dict[str, Tensor]) -> Any:
        copy = object.__new__(type(self))
        copy.__dict__.update(fields)
        return copy

    def to(self, device: str | torch.device, non_blocking: bool = False) -> Any:
        """A copy with every field on ``device`` (fields already there are shared)."""
        return self._new(
            {k: v.to(device, non_blocking=non_blocking) for k, v in self.__dict__.items()}
        )

    def clone(self) -> Any:
        """A copy with every tensor cloned (so it may be modified in place)."""
        return self._new({k: v.clone() for k, v in self.__dict__.items()})

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={list(v.shape)}" for k, v in self.__dict__.items())
        return f"{type(self).__name__}({shapes})"


class Batch(Data):
    """B structures in one: every field concatenated along axis 0, plus ``batch`` [N] (module
    notes). Build one with `Batch.from_data_list`; `structure(i)` / `to_data_list()` take the
    structures back out."""

    __slots__ = ("_offsets",)
    _offsets: dict[str, list[int]]
    """Per field of the structures (not ``batch``): where each structure starts along axis 0,
    and the total at the end ([B + 1])."""

    @classmethod
    def from_data_list(cls, structures: Sequence[Data]) -> Batch:
        """Concatenate ``structures`` (at least one; all with the same fields)."""
        if not structures:
            raise ValueError("Batch.from_data_list needs at least one structure")
        names = structures[0].keys()
        if "batch" in names:
            raise ValueError("the field name 'batch' is taken by the atoms' structure index")
        for index, item in enumerate(structures):
            if set(item.keys()) != set(names):
                raise ValueError(
                    f"structure {index} has fields {sorted(item.keys())}, structure 0 "
                    f"{sorted(names)}: a batch needs the same fields in every structure"
                )
        fields = {name: torch.cat([getattr(item, name) for item in structures]) for name in names}
        offsets = {}
        for name in names:
            ends = torch.tensor([getattr(item, name).shape[0] for item in structures]).cumsum(0)
            offsets[name] = [0, *ends.tolist()]
        counts = torch.diff(torch.tensor(offsets["pos"]))
        fields["batch"] = torch.repeat_interleave(torch.arange(len(structures)), counts).to(
            fields["pos"].device
        )
        return cls._with(fields, offsets)

    @classmethod
    def _with(cls, fields: dict[str, Tensor], offsets: dict[str, list[int]]) -> Batch:
        batch = object.__new__(cls)
        batch.__dict__.update(fields)
        batch._offsets = offsets
        return batch

    def _new(self, fields: dict[str, Tensor]) -> Batch:
        return self._with(fields, self._offsets)

    @property
    def num_graphs(self) -> int:
        """B, the number of structures."""
        return len(self._offsets["pos"]) - 1

    def structure(self, index: int) -> Data:
        """Structure ``index`` as a `Data` of its own (cloned fields, no ``batch``)."""
        if not 0 <= index < self.num_graphs:
            raise IndexError(f"structure {index} of a batch of {self.num_graphs}")
        return Data(
            **{
                name: getattr(self, name)[ends[index] : ends[index + 1]].clone()
                for name, ends in self._offsets.items()
            }
        )

    def to_data_list(self) -> list[Data]:
        """Every structure as a `Data` (see `structure`)."""
        return [self.structure(i) for i in range(self.num_graphs)]
