"""The one structure check of every entry: converters, the ASE calculator, relaxation and
simulation inputs.

A structure is refused with :class:`InvalidStructureError` (one line: where it comes from, the
atom index, the value) unless:

- it has at least one atom, and two when it is a molecule (no periodic direction): every model
  family builds messages from atom pairs within its cutoff (dens.models.graph); a lone atom of a
  molecule has none, and the networks fail on an empty edge list. A periodic cell's atoms pair
  with their images;
- its atomic numbers are integers in 1..``max_atomic_number`` (at most 118, the periodic table;
  converters use :data:`SUPPORTED_MAX_Z`, the calculator its model's embedding table);
- positions, cell, energy and forces are finite, positions [N, 3] and forces [N, 3];
- every coordinate satisfies ``|x| <= MAX_COORDINATE`` (1e4 Å) and every cell vector is at most
  ``MAX_CELL_LENGTH`` (1e3 Å) long;
- where some direction is periodic, the cell is not singular (volume > 0), each periodic
  direction's height (distance between opposite cell faces) is at least ``MIN_CELL_HEIGHT``
  (1 Å) and the atoms span at most ``MAX_CELL_SPREAD`` (10) cells along it.

The bounds keep the neighbour searches finite: ASE's neighbour list and the models' periodic
graph (dens.models.graph, images ``|n_i| <= ceil(cutoff / height_i + spread_i)``) allocate in
proportion to the cell lengths, the images and the extent of the coordinates; a cell scaled by
1e8 asked ASE for 617 PiB, an atom 1e9 Å away ended in an empty AssertionError.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from dens.errors import InvalidDataError, UnsupportedStructureError

if TYPE_CHECKING:
    from ase import Atoms

#: The periodic table's range of atomic numbers (dens.normalization.NUM_ELEMENTS = 119 rows).
MAX_ATOMIC_NUMBER = 118
#: The largest atomic number a dens model family embeds with its default tables (EquiformerV2
#: and eSCN ``max_num_elements`` 90, fairchem 1.x; Equiformer's MD17 table holds 64): what the
#: converters accept (OC20 and OC22 hold elements up to Bi, 83).
SUPPORTED_MAX_Z = 89
MAX_COORDINATE = 1e4  # Å
MAX_CELL_LENGTH = 1e3  # Å
MIN_CELL_HEIGHT = 1.0  # Å
MAX_CELL_SPREAD = 10.0  # cells


class InvalidStructureError(UnsupportedStructureError, InvalidDataError):
    """A structure outside what dens accepts (module notes); the message names where it comes
    from (file and row or frame, sid), the atom and the value. Both an UnsupportedStructureError
    (the calculator's refusals) and an InvalidDataError (a data file's)."""


def _symbol(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[z] if 0 <= z < len(chemical_symbols) else f"Z={z}"


def _vector(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{float(v):.6g}" for v in values) + "]"


def check_structure(
    numbers: np.ndarray,
    positions: np.ndarray,
    where: str,
    *,
    cell: np.ndarray | None = None,
    pbc: np.ndarray | None = None,
    energy: float | None = None,
    forces: np.ndarray | None = None,
    max_atomic_number: int = SUPPORTED_MAX_Z,
) -> None:
    """Raise InvalidStructureError (message starting with ``where``) unless the structure is
    within the bounds of the module notes. numbers [N] (atomic numbers), positions [N, 3] (Å),
    cell [3, 3] (rows are lattice vectors, Å) and pbc [3] (None: a molecule), energy (eV) and
    forces [N, 3] (eV/Å) when given; max_atomic_number: the largest accepted Z (<= 118)."""
    numbers = np.asarray(numbers)
    positions = np.asarray(positions)
    periodic = np.zeros(3, dtype=bool) if pbc is None else np.asarray(pbc, dtype=bool).reshape(3)
    n = len(numbers)
    _check_numbers(numbers, periodic, where, max_atomic_number)
    _check_positions(numbers, positions, where)
    if cell is not None:
        _check_cell(np.asarray(cell, dtype=np.float64), periodic, positions, where)
    if energy is not None and not np.isfinite(float(energy)):
        raise InvalidStructureError(f"{where}: energy {float(energy)} eV is not finite")
    if forces is not None:
        forces = np.asarray(forces)
        if forces.shape != (n, 3):
            raise InvalidStructureError(f"{where}: forces must be [{n}, 3], got {forces.shape}")
        _refuse_rows(
            ~np.isfinite(forces).all(axis=1), where, numbers, "force", forces, "eV/Å", "not finite"
        )


def _check_numbers(
    numbers: np.ndarray, periodic: np.ndarray, where: str, max_atomic_number: int
) -> None:
    """Enough atoms for the models (2 in a molecule, 1 in a periodic cell), given as integer
    atomic numbers [N] within 1..min(max_atomic_number, 118)."""
    n = len(numbers)
    needed = 1 if periodic.any() else 2
    if n < needed:
        kind = "a periodic cell" if periodic.any() else "a molecule"
        raise InvalidStructureError(
            f"{where}: {n} atom(s); {kind} needs at least {needed} (the models pass messages "
            "between atom pairs)"
        )
    if numbers.shape != (n,) or not np.issubdtype(numbers.dtype, np.integer):
        raise InvalidStructureError(f"{where}: atomic numbers must be integers [N], got {numbers}")
    top = min(int(max_atomic_number), MAX_ATOMIC_NUMBER)
    outside = np.flatnonzero((numbers < 1) | (numbers > top))
    if outside.size:
        i = int(outside[0])
        z = int(numbers[i])
        raise InvalidStructureError(
            f"{where}: atom {i} has atomic number {z} ({_symbol(z)}), outside the supported "
            f"1..{top} ({_symbol(top)})"
        )


def _check_positions(numbers: np.ndarray, positions: np.ndarray, where: str) -> None:
    """Positions [N, 3], finite and within |x| <= MAX_COORDINATE."""
    n = len(numbers)
    if positions.shape != (n, 3):
        raise InvalidStructureError(f"{where}: positions must be [{n}, 3], got {positions.shape}")
    _refuse_rows(
        ~np.isfinite(positions).all(axis=1),
        where,
        numbers,
        "position",
        positions,
        "Å",
        "not finite",
    )
    _refuse_rows(
        (np.abs(positions) > MAX_COORDINATE).any(axis=1),
        where,
        numbers,
        "position",
        positions,
        "Å",
        f"beyond |x| <= {MAX_COORDINATE:g} Å",
    )


def _refuse_rows(
    bad: np.ndarray,
    where: str,
    numbers: np.ndarray,
    what: str,
    rows: np.ndarray,
    unit: str,
    reason: str,
) -> None:
    """InvalidStructureError naming the first atom whose row of ``rows`` [N, 3] ``bad`` [N]
    marks, its element, the row's value in ``unit`` and ``reason``; nothing if none is."""
    marked = np.flatnonzero(bad)
    if marked.size:
        i = int(marked[0])
        raise InvalidStructureError(
            f"{where}: atom {i} ({_symbol(int(numbers[i]))}) has {what} "
            f"{_vector(rows[i])} {unit}, {reason}"
        )


def _check_cell(cell: np.ndarray, periodic: np.ndarray, positions: np.ndarray, where: str) -> None:
    if cell.shape != (3, 3):
        raise InvalidStructureError(f"{where}: cell must be [3, 3], got {cell.shape}")
    if not np.isfinite(cell).all():
        raise InvalidStructureError(f"{where}: cell {cell.tolist()} Å is not finite")
    lengths = np.linalg.norm(cell, axis=1)
    too_long = np.flatnonzero(lengths > MAX_CELL_LENGTH)
    if too_long.size:
        i = int(too_long[0])
        raise InvalidStructureError(
            f"{where}: cell vector {i} is {lengths[i]:.6g} Å long, beyond {MAX_CELL_LENGTH:g} Å"
        )
    if not periodic.any():
        return
    volume = abs(float(np.linalg.det(cell)))
    if not volume > 0.0:
        raise InvalidStructureError(
            f"{where}: periodic cell {cell.tolist()} Å is singular (volume 0 Å^3)"
        )
    inverse = np.linalg.inv(cell)
    fractional = positions @ inverse
    for i in np.flatnonzero(periodic).tolist():
        height = 1.0 / float(np.linalg.norm(inverse[:, i]))  # V / |a_j x a_k|
        if height < MIN_CELL_HEIGHT:
            raise InvalidStructureError(
                f"{where}: periodic cell height {height:.6g} Å along vector {i}, below "
                f"{MIN_CELL_HEIGHT:g} Å"
            )
        spread = float(np.ptp(fractional[:, i]))
        if spread > MAX_CELL_SPREAD:
            raise InvalidStructureError(
                f"{where}: the atoms span {spread:.6g} cells along periodic vector {i}, beyond "
                f"{MAX_CELL_SPREAD:g} (wrap them into the cell)"
            )


def check_frames(
    numbers: np.ndarray,
    positions: np.ndarray,
    where: str,
    *,
    energies: np.ndarray,
    forces: np.ndarray,
    cell: np.ndarray | None = None,
    pbc: np.ndarray | None = None,
    max_atomic_number: int = SUPPORTED_MAX_Z,
) -> None:
    """check_structure of every frame of one trajectory (numbers [N], cell and pbc shared;
    positions [F, N, 3] Å, energies [F] eV, forces [F, N, 3] eV/Å) at the cost of one pass over
    the arrays: the first frame in full, then non-finite or out-of-bounds positions, energies and
    forces of all frames at once; the first frame that fails is checked in full, its
    InvalidStructureError naming ``where``, ``frame <k>``, the atom and the value. 2.5 ms for
    1000 frames of 21 atoms, against 0.3 ms per frame for check_structure (measured)."""
    positions, energies, forces = np.asarray(positions), np.asarray(energies), np.asarray(forces)
    if not len(positions):
        return

    def full(frame: int) -> None:
        check_structure(
            numbers,
            positions[frame],
            f"{where}: frame {frame}",
            cell=cell,
            pbc=pbc,
            energy=float(energies[frame]),
            forces=forces[frame],
            max_atomic_number=max_atomic_number,
        )

    full(0)
    good = np.isfinite(positions).all(axis=(1, 2)) & np.isfinite(energies)
    good &= np.isfinite(forces).all(axis=(1, 2))
    good &= (np.abs(positions) <= MAX_COORDINATE).all(axis=(1, 2))
    bad = np.flatnonzero(~good)
    if bad.size:
        full(int(bad[0]))


def model_max_atomic_number(model: Any) -> int:
    """The largest atomic number ``model`` embeds: its table size minus one (EquiformerV2 and
    eSCN ``max_num_elements``, Equiformer ``max_atomic_number``), capped at 118."""
    for name in ("max_num_elements", "max_atomic_number"):
        size = getattr(model, name, None)
        if isinstance(size, int):
            return min(size - 1, MAX_ATOMIC_NUMBER)
    return MAX_ATOMIC_NUMBER


def check_elements_embedded(dataset: Any, model: Any, where: str) -> None:
    """Refuse a dataset holding an atomic number beyond what ``model`` embeds
    (``model_max_atomic_number``): its embedding table would be indexed out of range, an
    IndexError deep in the forward pass on CPU and a device-side assert on CUDA. ``dataset``:
    checked where it knows its ``elements`` (dens.data.aselmdb.AseLmdbDataset: every split the
    commands read); other datasets are not read here (a pass over a large or streamed dataset
    is the caller's to pay). ``where`` names it (e.g. the split file)."""
    elements = getattr(dataset, "elements", None)
    if elements is None:
        return
    top = model_max_atomic_number(model)
    beyond = sorted(int(z) for z in elements if int(z) > top)
    if beyond:
        listed = ", ".join(f"{_symbol(z)} (Z={z})" for z in beyond[:5])
        raise InvalidStructureError(
            f"{where}: holds {listed}{' ...' if len(beyond) > 5 else ''}, beyond the model's "
            f"embedding table (atomic numbers 1..{top}); use a model with a larger table "
            "(max_num_elements / max_atomic_number) or leave these structures out"
        )


def model_cutoff(model: Any) -> float | None:
    """The radius (Å) within which ``model`` pairs atoms (``cutoff``; Equiformer
    ``max_radius``), None when it states none."""
    for name in ("cutoff", "max_radius"):
        value = getattr(model, name, None)
        if isinstance(value, int | float):
            return float(value)
    return None


def check_atoms(
    atoms: Atoms, where: str, max_atomic_number: int = SUPPORTED_MAX_Z, labels: bool = True
) -> None:
    """check_structure of an ASE Atoms: its cell and pbc, and with ``labels`` the energy and
    forces of its calculator's results where present."""
    results = atoms.calc.results if (labels and atoms.calc is not None) else {}
    periodic = atoms.pbc.any()
    check_structure(
        atoms.numbers,
        atoms.positions,
        where,
        cell=np.asarray(atoms.cell) if periodic else None,
        pbc=atoms.pbc if periodic else None,
        energy=results.get("energy"),
        forces=results.get("forces"),
        max_atomic_number=max_atomic_number,
    )
