"""Frames of the OC20 S2EF archives: ``*.extxyz.xz`` files with one ``*.txt.xz`` each.

Each extxyz frame's comment line carries the cell (``Lattice=...``), ``Properties=species:S:1:
pos:R:3:move_mask:L:1:tags:I:1:forces:R:3``, ``energy=`` (total, eV) and ``pbc="T T T"``; line
``k`` of the txt file belongs to frame ``k``: ``random<sid>,frame<fid>,<reference energy>``.

:func:`read_s2ef_frames` streams one such pair: it decompresses both files as it goes, cuts the
extxyz text into batches of whole frames (reading only each frame's atom-count line) and parses
every batch with ASE's extxyz reader (``ase.io.read(..., format="extxyz", index=":")``). Each
frame comes back as ``(atoms, key_value_pairs, data)`` ready for an aselmdb row:

- ``atoms``: positions, cell, pbc, tags, ``FixAtoms`` of the atoms with ``move_mask`` False, and
  a SinglePointCalculator with the training label ``energy`` = total - reference (the OC20
  adsorption energy, as the OC20 tooling's reference-energy option stores it) and ``forces``;
- ``key_value_pairs``: ``sid``, ``fid`` (ints), ``total_energy``, ``reference_energy``,
  ``md_split``;
- ``data``: ``{"sid": sid}`` (where fairchem's AseDBDataset looks for the system id).

A damaged ``.xz`` stream, a frame cut short, a txt file with fewer (or more) lines than the
extxyz has frames, or a malformed txt line raises :class:`dens.errors.DataError` naming the file
and the line. A frame outside the bounds of dens.data.validation (no atom, a non-finite
position, cell, energy, reference or force, an element beyond
dens.data.validation.SUPPORTED_MAX_Z, a cell or coordinate beyond the stated bounds) raises its
InvalidStructureError (a DataError) naming the file, the frame, its line, sid and the value.
"""

from __future__ import annotations

import io
import lzma
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ase.io
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from dens.data.validation import check_atoms
from dens.errors import DataError

EXTXYZ_SUFFIX = ".extxyz.xz"
TXT_SUFFIX = ".txt.xz"
#: Frames handed to ASE's reader at once (bounded memory: a few MB of text).
BATCH_FRAMES = 256

_TXT_LINE = re.compile(r"\s*random(\d+)\s*,\s*frame(\d+)\s*,\s*(\S+)\s*")
_REEXTRACT = "delete the extracted archive directory and extract the archive again"

Row = tuple[Atoms, dict[str, Any], dict[str, Any]]


def txt_for(extxyz: Path) -> Path:
    """The ``*.txt.xz`` file that belongs to ``<name>.extxyz.xz``."""
    name = extxyz.name
    if not name.endswith(EXTXYZ_SUFFIX):
        raise ValueError(f"{extxyz} does not end in {EXTXYZ_SUFFIX}")
    return extxyz.with_name(name[: -len(EXTXYZ_SUFFIX)] + TXT_SUFFIX)


class _Lines:
    """Lines of an xz-compressed text file, counting them; a damaged stream raises DataError
    naming the file and the last line read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.number = 0  # lines read so far
        self._handle = lzma.open(path, "rt", encoding="utf-8", newline="")

    def readline(self) -> str:
        try:
            line = self._handle.readline()
        except (lzma.LZMAError, EOFError, UnicodeDecodeError) as err:
            raise DataError(
                f"{self.path}: damaged xz stream after line {self.number} "
                f"({type(err).__name__}: {err}); {_REEXTRACT}"
            ) from err
        if line:
            self.number += 1
        return line

    def close(self) -> None:
        self._handle.close()


def _reference(txt: _Lines, frame: int, xz: Path, frame_line: int) -> tuple[int, int, float]:
    line = txt.readline()
    if not line:
        raise DataError(
            f"{txt.path}: line {frame + 1}: missing: {xz} line {frame_line} starts frame "
            f"{frame + 1} but {txt.path} has only {frame} lines (one per frame expected); "
            f"{_REEXTRACT}"
        )
    match = _TXT_LINE.fullmatch(line)
    try:
        if match is None:
            raise ValueError
        return int(match[1]), int(match[2]), float(match[3])
    except ValueError:
        raise DataError(
            f"{txt.path}: line {txt.number}: expected 'random<sid>,frame<fid>,<reference "
            f"energy>', got {line.strip()!r}"
        ) from None


def _frames_text(xz: _Lines) -> Iterator[tuple[int, str]]:
    """(first line number, text) of each whole frame of an extxyz stream."""
    while True:
        header = xz.readline()
        if not header or not header.strip():
            # A trailing blank line ends the file, as in ASE's reader; nothing may follow it.
            while rest := xz.readline():
                if rest.strip():
                    raise DataError(
                        f"{xz.path}: line {xz.number}: text after a blank line ends the frames"
                    )
            return
        start = xz.number
        try:
            natoms = int(header)
        except ValueError:
            raise DataError(
                f"{xz.path}: line {start}: expected the atom count of a frame, "
                f"got {header.strip()[:80]!r}"
            ) from None
        lines = [header]
        for _ in range(natoms + 1):  # comment line + one line per atom
            line = xz.readline()
            if not line:
                raise DataError(
                    f"{xz.path}: line {start}: frame of {natoms} atoms cut short: the file "
                    f"ends at line {xz.number}; {_REEXTRACT}"
                )
            lines.append(line)
        yield start, "".join(lines)


def _parse(xz: Path, first_line: int, text: str, count: int) -> list[Atoms]:
    try:
        frames = ase.io.read(io.StringIO(text), format="extxyz", index=":")
    except Exception as err:  # ASE raises XYZError, ValueError, KeyError, IndexError, ...
        raise DataError(
            f"{xz}: line {first_line}: ASE's extxyz reader failed on the frames from this line "
            f"on ({type(err).__name__}: {err})"
        ) from err
    if len(frames) != count:
        raise DataError(f"{xz}: line {first_line}: ASE read {len(frames)} of {count} frames")
    return frames


def _row(atoms: Atoms, sid: int, fid: int, reference: float, md_split: bool, where: str) -> Row:
    results = atoms.calc.results if atoms.calc is not None else {}
    missing = [key for key in ("energy", "forces") if key not in results]
    if missing:
        raise DataError(f"{where}: frame has no {' and '.join(missing)}")
    if "tags" not in atoms.arrays:
        raise DataError(f"{where}: frame has no tags column")
    check_atoms(atoms, where)
    total = float(results["energy"])
    forces = results["forces"]
    if not math.isfinite(reference):
        raise DataError(f"{where}: reference energy {reference} eV (txt file) is not finite")
    atoms.info = {}
    atoms.calc = SinglePointCalculator(atoms, energy=total - reference, forces=forces)
    key_value_pairs = {
        "sid": sid,
        "fid": fid,
        "total_energy": total,
        "reference_energy": reference,
        "md_split": bool(md_split),
    }
    return atoms, key_value_pairs, {"sid": sid}


def read_s2ef_frames(
    extxyz: Path, txt: Path | None = None, md_split: bool = False, batch: int = BATCH_FRAMES
) -> Iterator[Row]:
    """Stream the frames of one ``*.extxyz.xz`` and its ``*.txt.xz`` (default: :func:`txt_for`)
    as ``(atoms, key_value_pairs, data)`` rows (module notes). ``md_split`` marks every frame
    as an MD frame."""
    extxyz = Path(extxyz)
    txt = txt_for(extxyz) if txt is None else Path(txt)
    if not txt.is_file():
        raise DataError(f"{txt}: not found; {extxyz} needs it for the sid, fid and reference")
    xz_lines, txt_lines = _Lines(extxyz), _Lines(txt)
    frame = 0
    try:
        pending: list[tuple[int, str, tuple[int, int, float]]] = []

        def flush() -> Iterator[Row]:
            text = "".join(chunk for _, chunk, _ in pending)
            parsed = _parse(extxyz, pending[0][0], text, len(pending))
            first = frame - len(pending)
            for k, (atoms, (line, _, (sid, fid, reference))) in enumerate(
                zip(parsed, pending, strict=True)
            ):
                where = f"{extxyz}: line {line}: frame {first + k} (sid {sid}, fid {fid})"
                yield _row(atoms, sid, fid, reference, md_split, where)
            pending.clear()

        for line, text in _frames_text(xz_lines):
            pending.append((line, text, _reference(txt_lines, frame, extxyz, line)))
            frame += 1
            if len(pending) >= batch:
                yield from flush()
        if pending:
            yield from flush()
        extra = txt_lines.readline()
        if extra.strip():
            raise DataError(
                f"{txt}: line {txt_lines.number}: more lines than {extxyz} has frames ({frame})"
            )
    finally:
        xz_lines.close()
        txt_lines.close()
