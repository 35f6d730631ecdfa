"""Fuzz test (issue 23): damaged files and malformed structures end in success or one `dens`
error line, never a signal, a traceback or a finite answer from non-finite input.

Seeded (``random.Random(SEED + n)``), bounded in count: random bytes written at random offsets,
at LMDB page starts, bit flips, truncations and appended bytes into an aselmdb split (with its
manifest, as `dens data prepare` writes it, and without, checked page by page as a split above
dens.data.aselmdb_integrity.SHA256_LIMIT_BYTES is), the best.pt and last.pt of a `dens train` run,
an MD17 npz, an S2EF ``.extxyz.xz`` (its bytes, and its text recompressed) and a ``.tar.gz``
archive; rows, frames and structures with NaN/inf positions, a NaN cell, 0 or 1 atom,
Z = 0/119/150, a huge cell, an atom 1e9 Å away or overlapping atoms, given to the aselmdb reader,
the converters, the ASE calculator and `dens relax`.

Each case runs in a forked child (a signal or a hang cannot take the test worker down) through
the library entry the command calls (AseLmdbDataset for `dens train/evaluate`, load_trained_model
and load_checkpoint, convert_md17_npz for `dens data prepare`, read_s2ef_frames, extract for
`dens data extract`, DeNSCalculator, `dens relax` itself), an error printed the way `dens` prints
it (dens.pipeline.cli: one line for the errors it owns, a traceback for any other); a handful of
cases run as `python -m dens ...` subprocesses. Outcomes: ``ok`` (success: the data read back equal
to the undamaged file's, or a finite answer from finite input), ``error`` (exit 2, one line naming
the file), ``signal``, ``traceback``, ``other``. With DENS_FUZZ_RECORD=FILE each case's outcome
is appended to FILE (JSON lines), for counting outcomes on another checkout.
"""

from __future__ import annotations

import io
import json
import lzma
import os
import random
import signal
import subprocess
import sys
import tarfile
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ase
import ase.build
import ase.calculators.calculator
import ase.io
import numpy as np
import pytest
import torch
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

REPO = Path(__file__).resolve().parents[1]
SEED = 23
EXPERIMENT = "md17-ethanol/equiformer-l2"
SMOKE = ["--scale", "smoke", "--seed", "1", "--device", "cpu", "--threads", "1"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- running one case ----------------------------------------------------------------------------
@dataclass
class Outcome:
    kind: str  # ok, error, signal, traceback, other
    text: str  # the case's output (stdout and stderr)


def _as_dens(call: Callable[[], str | None]) -> int:
    """Run ``call`` and print its result as `dens` would: exit 0 (``ok <note>``), 2 and one line
    for an error dens.pipeline.cli prints as one line, 1 and a traceback for any other."""
    try:
        note = call()
    except Exception as error:
        from dens.errors import DensError
        from dens.pipeline import cli

        user_error = getattr(cli, "_user_error", None)  # older checkouts: DensError only
        shown = (
            user_error(error) if user_error else (error if isinstance(error, DensError) else None)
        )
        if shown is None:
            traceback.print_exc()
            return 1
        line = " ".join(part.strip() for part in str(shown).splitlines() if part.strip())
        print(f"dens: error: {line}", file=sys.stderr)
        return 2
    print(f"ok {note or ''}".strip())
    return 0


def classify(code: int, text: str) -> Outcome:
    """The outcome of a finished case (exit status ``code``, negative for a signal)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if code < 0 or code > 128:
        kind = "signal"
    elif "Traceback (most recent call last)" in text:
        kind = "traceback"
    elif code == 0:
        kind = "ok"
    elif code == 2 and len(lines) == 1 and lines[0].startswith("dens: error: "):
        kind = "error"
    else:
        kind = "other"
    return Outcome(kind, text)


def in_child(call: Callable[[], str | None], timeout: int = 60) -> Outcome:
    """Run ``call`` (``_as_dens``) in a forked child with its output captured; a signal (also
    SIGALRM after ``timeout`` seconds, a hang) is an outcome, not the end of the test."""
    with tempfile.TemporaryFile() as out:
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(out.fileno(), 2)
                sys.stdout = sys.stderr = open(1, "w", closefd=False)  # noqa: SIM115
                signal.alarm(timeout)
                code = _as_dens(call)
                sys.stdout.flush()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        text = out.read().decode(errors="replace")
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return classify(code, text)


def dens_subprocess(args: list[str], cwd: Path = REPO) -> Outcome:
    """`python -m dens ARGS`, as a user runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "dens", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=os.environ | {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""},
    )
    return classify(done.returncode, done.stdout + done.stderr)


def record(test: str, case: str, outcome: Outcome) -> Outcome:
    """Append the outcome to $DENS_FUZZ_RECORD (JSON lines) when set; return it."""
    target = os.environ.get("DENS_FUZZ_RECORD")
    if target:
        with open(target, "a") as handle:
            line = outcome.text.strip().splitlines()[-1:] or [""]
            entry = {"test": test, "case": case, "outcome": outcome.kind, "line": line[0][:300]}
            handle.write(json.dumps(entry) + "\n")
    return outcome


def check(outcomes: dict[str, Outcome], names: str | tuple[str, ...], ok: str | None) -> None:
    """Every outcome is ``ok`` with note ``ok`` (None: no success allowed) or an ``error`` line
    naming one of ``names``; the failing cases listed otherwise."""
    names = (names,) if isinstance(names, str) else names
    bad = {}
    for case, outcome in outcomes.items():
        if outcome.kind == "ok" and ok is not None and outcome.text.strip() == f"ok {ok}":
            continue
        if outcome.kind == "error" and any(name in outcome.text for name in names):
            continue
        bad[case] = f"{outcome.kind}: {outcome.text.strip()[-400:]}"
    counts = Counter(outcome.kind for outcome in outcomes.values())
    assert not bad, f"{len(bad)} of {len(outcomes)} cases ({dict(counts)}): " + "\n".join(
        f"{case}: {text}" for case, text in bad.items()
    )


# -- damage --------------------------------------------------------------------------------------
def damaged(original: bytes, rng: random.Random, n: int, page: int = 0) -> dict[str, bytes]:
    """``n`` damaged copies of ``original`` by label: 16 random bytes at a page start (when
    ``page``, the page size) or at a random offset, 1-3 flipped bits, a truncation, a zeroed
    block, appended bytes, in turn."""
    kinds = ("page", "bytes", "bits", "truncated", "zeroed", "appended")
    if not page:
        kinds = kinds[1:]
    copies = {}
    size = len(original)
    for index in range(n):
        kind = kinds[index % len(kinds)]
        data = bytearray(original)
        if kind == "page":
            offset = rng.randrange(2, size // page) * page
            data[offset : offset + 16] = rng.randbytes(16)
        elif kind == "bytes":
            offset = rng.randrange(size - 16)
            data[offset : offset + 16] = rng.randbytes(16)
        elif kind == "bits":
            offset = rng.randrange(size)
            for _ in range(rng.randint(1, 3)):
                data[offset + rng.randrange(min(64, size - offset))] ^= 1 << rng.randrange(8)
        elif kind == "truncated":
            offset = rng.randrange(size)
            del data[offset:]
        elif kind == "zeroed":
            offset = rng.randrange(size - 1)
            length = min(rng.randint(1, 512), size - offset)
            data[offset : offset + length] = bytes(length)
        else:
            offset = size
            data += rng.randbytes(rng.randint(1, 4096))
        copies[f"{index:02d} {kind} at {offset}"] = bytes(data)
    return copies


def ethanol(rng: np.random.Generator) -> ase.Atoms:
    atoms = ase.Atoms("C2H6O", positions=rng.normal(0.0, 1.5, size=(9, 3)))
    atoms.calc = SinglePointCalculator(
        atoms, energy=float(rng.normal(-10.0, 0.3)), forces=rng.normal(0.0, 0.5, size=(9, 3))
    )
    return atoms


def write_split(path: Path, n: int, seed: int) -> Path:
    from dens.data.aselmdb import write_aselmdb

    rng = np.random.default_rng(seed)
    write_aselmdb(path, [ethanol(rng) for _ in range(n)])
    return path


def manifest(path: Path) -> Path | None:
    """Write the manifest `dens data prepare` writes beside a split; None where this checkout
    has none."""
    try:
        from dens.data import aselmdb_integrity as integrity
    except ImportError:  # older checkouts: the checks are in dens.data.aselmdb
        from dens.data import aselmdb as integrity

    if not hasattr(integrity, "write_manifest"):
        return None
    integrity.write_manifest(path)
    return integrity.manifest_path(path)


@pytest.fixture(scope="module")
def md17_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A smoke run of md17-ethanol/equiformer-l2 trained by `dens train` (2 epochs, 16 + 4
    structures): its run directory, splits and checkpoints."""
    from dens.pipeline.cli import main

    root = tmp_path_factory.mktemp("md17_run")
    train = write_split(root / "train.aselmdb", 16, seed=1)
    val = write_split(root / "val.aselmdb", 4, seed=2)
    for split in (train, val):
        manifest(split)
    run = root / "run"
    argv = ["train", EXPERIMENT, *SMOKE, "--run-dir", str(run), "--train", str(train)]
    with _no_cuda():
        assert main([*argv, "--val", str(val)]) == 0
    return {"run": run, "train": train, "val": val, "root": root}


class _no_cuda:  # noqa: N801 (used as a context manager)
    """torch.cuda.is_available() False inside (also on a GPU machine)."""

    def __enter__(self) -> None:
        self.saved = torch.cuda.is_available
        torch.cuda.is_available = lambda: False

    def __exit__(self, *exc: object) -> None:
        torch.cuda.is_available = self.saved


# -- aselmdb splits (dens train / evaluate) ------------------------------------------------------
def _read_split(path: Path, reference: Path, structural: bool) -> Callable[[], str]:
    """AseLmdbDataset(path), as `dens train` and `dens evaluate` open a split; "same" when it
    reads as ``reference`` does. ``structural``: checked as a split above the sha256 limit."""

    def call() -> str:
        from dens.data import aselmdb

        try:
            from dens.data import aselmdb_integrity as integrity
        except ImportError:  # older checkouts: the checks are in dens.data.aselmdb
            integrity = aselmdb
        if structural and hasattr(integrity, "SHA256_LIMIT_BYTES"):
            integrity.SHA256_LIMIT_BYTES = 0
        read, expected = aselmdb.AseLmdbDataset(path), aselmdb.AseLmdbDataset(reference)
        if len(read) != len(expected):
            return f"different: {len(read)} rows, {len(expected)} written"
        for i in range(len(read)):
            a, b = read[i], expected[i]
            for key in ("pos", "forces", "energy", "atomic_numbers"):
                if not torch.equal(getattr(a, key), getattr(b, key)):
                    return f"different: row {i + 1} {key}"
        return "same"

    return call


@pytest.mark.parametrize("with_manifest", [True, False], ids=["manifest", "page-walk"])
def test_damaged_aselmdb_split(tmp_path: Path, with_manifest: bool) -> None:
    """Before (e94068c): SIGBUS (no message, exit 135) at data page starts, zlib tracebacks
    naming no file, a file reading silently as 0 rows."""
    original = write_split(tmp_path / "orig" / "val.aselmdb", 60, seed=3)
    if with_manifest:
        manifest(original)
    rng = random.Random(SEED + with_manifest)
    outcomes = {}
    for label, data in damaged(original.read_bytes(), rng, 18, page=4096).items():
        path = tmp_path / label.replace(" ", "_") / "val.aselmdb"
        path.parent.mkdir()
        path.write_bytes(data)
        if with_manifest and (orig_manifest := manifest_of(original)) is not None:
            (path.parent / orig_manifest.name).write_bytes(orig_manifest.read_bytes())
        outcome = in_child(_read_split(path, original, structural=not with_manifest))
        outcomes[label] = record(
            "aselmdb " + ("manifest" if with_manifest else "walk"), label, outcome
        )
    check(outcomes, str(tmp_path), ok="same")


def manifest_of(path: Path) -> Path | None:
    target = path.with_name(path.name + ".manifest.json")
    return target if target.is_file() else None


def _atoms_row(change: str, rng: np.random.Generator) -> ase.Atoms:
    atoms = ethanol(rng)
    forces, energy = atoms.get_forces(), atoms.get_potential_energy()
    if change == "nan position":
        atoms.positions[4, 1] = np.nan
    elif change == "inf force":
        forces[2, 0] = np.inf
    elif change == "nan energy":
        energy = np.nan
    elif change == "Z=0":
        atoms.numbers[1] = 0
    elif change == "Z=150":
        atoms.numbers[1] = 150
    elif change == "no atom":
        atoms, forces = atoms[:0], forces[:0]
    elif change == "one atom":
        atoms, forces = atoms[:1], forces[:1]
    elif change == "atom 1e9 Å away":
        atoms.positions[0] = [1e9, 0.0, 0.0]
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms


ROW_CHANGES = (
    "nan position",
    "inf force",
    "nan energy",
    "Z=0",
    "Z=150",
    "no atom",
    "one atom",
    "atom 1e9 Å away",
)


def test_malformed_rows_in_an_aselmdb_split(tmp_path: Path) -> None:
    """A row with a non-finite position, force or energy, a bad Z, no atom or a lone atom
    refused by the reader naming the file and row. Before: read, and trained or scored."""
    from dens.data.aselmdb import write_aselmdb

    rng = np.random.default_rng(SEED)
    outcomes = {}
    for change in ROW_CHANGES:
        rows = [ethanol(rng) for _ in range(3)]
        rows.insert(2, _atoms_row(change, rng))
        path = tmp_path / change.replace(" ", "_") / "val.aselmdb"
        write_aselmdb(path, rows)
        manifest(path)
        outcomes[change] = record("aselmdb rows", change, in_child(_read_split(path, path, False)))
    check(outcomes, "val.aselmdb: row 3", ok=None)


# -- checkpoints (dens evaluate, dens train's resume, the calculator) ----------------------------
def _load_checkpoint(path: Path, reference: Path, kind: str) -> Callable[[], str]:
    """best.pt as `dens evaluate` and the calculator load it (load_trained_model: the model
    built and its weights loaded), last.pt as `dens train` resumes (load_checkpoint); "same"
    when every tensor equals the undamaged file's."""

    def call() -> str:
        from dens.checkpoint import load_checkpoint

        if kind == "best":
            from dens.inference import load_trained_model

            load_trained_model(path)
        state = load_checkpoint(path)
        expected = load_checkpoint(reference)
        flat, flat_expected = _flatten(state), _flatten(expected)
        if flat.keys() != flat_expected.keys():
            return "different: keys"
        for key, value in flat.items():
            other = flat_expected[key]
            same = torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
            if not same:
                return f"different: {key}"
        return "same"

    return call


def _flatten(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        return {
            k: v
            for key, item in value.items()
            for k, v in _flatten(item, f"{prefix}/{key}").items()
        }
    if isinstance(value, list | tuple):
        return {
            k: v for i, item in enumerate(value) for k, v in _flatten(item, f"{prefix}/{i}").items()
        }
    return {prefix: value}


@pytest.mark.parametrize("kind", ["best", "last"])
def test_damaged_checkpoint(md17_run: dict[str, Path], tmp_path: Path, kind: str) -> None:
    original = md17_run["run"] / "checkpoints" / f"{kind}.pt"
    rng = random.Random(SEED + len(kind))
    outcomes = {}
    for label, data in damaged(original.read_bytes(), rng, 12).items():
        path = tmp_path / label.replace(" ", "_") / "checkpoints" / f"{kind}.pt"
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
        outcome = in_child(_load_checkpoint(path, original, kind))
        outcomes[label] = record(f"checkpoint {kind}", label, outcome)
    check(outcomes, str(tmp_path), ok="same")


# -- MD17 npz (dens data prepare md17-<molecule> FILE.npz --scale paper) -------------------------
def md17_npz(path: Path, frames: int = 20, **change: object) -> Path:
    """An MD17-like npz of ethanol (R, z, E, F in the original's units and shapes)."""
    rng = np.random.default_rng(SEED)
    arrays = {
        "R": rng.normal(0.0, 1.5, size=(frames, 9, 3)),
        "z": np.array([6, 6, 8, 1, 1, 1, 1, 1, 1]),
        "E": rng.normal(-97000.0, 5.0, size=(frames, 1)),
        "F": rng.normal(0.0, 20.0, size=(frames, 9, 3)),
    }
    for key, value in change.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def _convert(npz: Path, out: Path, reference: Path) -> Callable[[], str]:
    """convert_md17_npz, what `dens data prepare md17-* FILE.npz --scale paper` runs (with
    splits of 10 + 5 + the rest instead of 950 + 50 + the rest); "same" when the npz it
    converted holds the arrays of ``reference``."""

    def call() -> str:
        from dens.data.md17 import convert_md17_npz

        convert_md17_npz(npz, out, n_train=10, n_val=5)
        with np.load(npz) as arrays, np.load(reference) as expected:
            for key in expected.files:
                if not np.array_equal(arrays[key], expected[key]):
                    return f"different: {key}"
        return "same"

    return call


def _npz_malformed(root: Path) -> dict[str, Path]:
    base = md17_npz(root / "base.npz")
    arrays = dict(np.load(base))
    R, E, F, z = arrays["R"], arrays["E"], arrays["F"], arrays["z"]  # noqa: N806 (MD17 keys)
    cases: dict[str, dict[str, object]] = {
        "nan position": {"R": np.where(np.arange(R.size).reshape(R.shape) == 400, np.nan, R)},
        "inf force": {"F": np.concatenate([F[:-1], np.full((1, 9, 3), np.inf)])},
        "nan energy": {"E": np.concatenate([E[:10], [[np.nan]], E[11:]])},
        "no atom": {"R": R[:, :0], "F": F[:, :0], "z": z[:0]},
        "one atom": {"R": R[:, :1], "F": F[:, :1], "z": z[:1]},
        "Z=0": {"z": np.where(np.arange(9) == 3, 0, z)},
        "Z=200": {"z": np.where(np.arange(9) == 3, 200, z)},
        "missing F": {"F": None},
        "R of 8 atoms": {"R": R[:, :8]},
        "12 frames": {"R": R[:12], "E": E[:12], "F": F[:12]},
        "float z": {"z": z.astype(float)},
        "object array": {"E": np.array([object()] * len(E), dtype=object)},
    }
    return {
        name: md17_npz(root / f"{i}.npz", **change)
        for i, (name, change) in enumerate(cases.items())
    }


def test_damaged_and_malformed_md17_npz(tmp_path: Path) -> None:
    """Before: 0-atom molecules and Z = 200 converted, a missing key a bare ValueError."""
    import dens.data.md17  # noqa: F401 (imported once, not in every child)

    original = md17_npz(tmp_path / "orig" / "md17_ethanol.npz")
    rng = random.Random(SEED)
    outcomes = {}
    for label, data in damaged(original.read_bytes(), rng, 10).items():
        path = tmp_path / label.replace(" ", "_") / "md17_ethanol.npz"
        path.parent.mkdir()
        path.write_bytes(data)
        outcome = in_child(_convert(path, path.parent / "out", original))
        outcomes[label] = record("md17 npz damaged", label, outcome)
    check(outcomes, str(tmp_path), ok="same")
    outcomes = {}
    for label, path in _npz_malformed(tmp_path / "malformed").items():
        outcome = in_child(_convert(path, path.with_suffix(""), path))
        outcomes[label] = record("md17 npz malformed", label, outcome)
    check(outcomes, str(tmp_path), ok=None)


# -- S2EF extxyz (dens data prepare oc20-* --scale paper: dens.data.s2ef_extxyz) -----------------
def slabs(n: int, seed: int) -> list[ase.Atoms]:
    """OC20-like S2EF frames: Cu(111) 2x2x3 slabs with CO, tags, the bottom layers fixed."""
    from ase.build import add_adsorbate, fcc111

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        slab = fcc111("Cu", size=(2, 2, 3), vacuum=7.0)
        add_adsorbate(slab, ase.Atoms("CO", positions=[[0, 0, 0], [0, 0, 1.2]]), 1.8, "fcc")
        slab.info.clear()
        slab.set_tags([0] * 8 + [1] * 4 + [2, 2])
        slab.set_constraint(FixAtoms(indices=range(8)))
        slab.pbc = True
        slab.positions += rng.normal(scale=0.05, size=slab.positions.shape)
        slab.calc = SinglePointCalculator(
            slab, energy=float(rng.normal(-50.0, 1.0)), forces=rng.normal(0, 0.3, (14, 3))
        )
        frames.append(slab)
    return frames


def s2ef_text(frames: list[ase.Atoms]) -> str:
    text = io.StringIO()
    ase.io.write(text, frames, format="extxyz")
    return text.getvalue()


def write_s2ef(directory: Path, text: str, n: int, xz: bytes | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    extxyz = directory / "0.extxyz.xz"
    extxyz.write_bytes(lzma.compress(text.encode()) if xz is None else xz)
    ids = "".join(f"random{100 + i},frame{i},{-12.5 - i}\n" for i in range(n))
    (directory / "0.txt.xz").write_bytes(lzma.compress(ids.encode()))
    return extxyz


def _read_s2ef(path: Path, reference: Path) -> Callable[[], str]:
    """read_s2ef_frames, what `dens data prepare oc20-* --scale paper` converts each S2EF file
    with; "same" when the frames equal those of the undamaged ``reference``."""

    def call() -> str:
        from dens.data.s2ef_extxyz import read_s2ef_frames

        rows, expected = list(read_s2ef_frames(path)), list(read_s2ef_frames(reference))
        if len(rows) != len(expected):
            return f"different: {len(rows)} frames"
        for (atoms, keys, _), (frame, expected_keys, _) in zip(rows, expected, strict=True):
            if keys != expected_keys or atoms != frame:
                return "different: frame"
            if not np.array_equal(atoms.get_forces(), frame.get_forces()):
                return "different: forces"
        return "same"

    return call


def _s2ef_malformed(frames: list[ase.Atoms]) -> dict[str, list[ase.Atoms]]:
    cases = {}
    for change in ("nan force", "nan energy", "nan position", "no atom", "cell 1e12", "Og"):
        copy = [atoms.copy() for atoms in frames]
        for original, atoms in zip(frames, copy, strict=True):
            atoms.calc = SinglePointCalculator(
                atoms, energy=original.get_potential_energy(), forces=original.get_forces()
            )
        atoms = copy[1]
        forces, energy = atoms.get_forces(), atoms.get_potential_energy()
        if change == "nan force":
            forces[3, 1] = np.nan
        elif change == "nan energy":
            energy = np.nan
        elif change == "nan position":
            atoms.positions[5, 2] = np.nan
        elif change == "no atom":
            del atoms[:]
            forces = forces[:0]
        elif change == "cell 1e12":
            atoms.set_cell(atoms.cell * 1e12)
        else:
            atoms.numbers[-1] = 118
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        cases[change] = copy
    return cases


def test_damaged_and_malformed_s2ef_extxyz(tmp_path: Path) -> None:
    """Before: NaN forces and energies, 0-atom frames, a 1e12 Å cell and Og written without a
    word; a NaN position reported later as a row without labels."""
    frames = slabs(6, seed=SEED)
    text = s2ef_text(frames)
    original = lzma.compress(text.encode())
    reference = write_s2ef(tmp_path / "orig", text, len(frames))
    rng = random.Random(SEED)
    outcomes = {}
    for label, data in damaged(original, rng, 8).items():
        path = write_s2ef(tmp_path / "xz" / label.replace(" ", "_"), text, len(frames), xz=data)
        outcomes["xz " + label] = record("s2ef xz", label, in_child(_read_s2ef(path, reference)))
    for label, data in damaged(text.encode(), rng, 10).items():
        damaged_text = data.decode("utf-8", errors="replace")
        path = write_s2ef(tmp_path / "text" / label.replace(" ", "_"), damaged_text, len(frames))
        outcomes["text " + label] = record(
            "s2ef text", label, in_child(_read_s2ef(path, reference))
        )
    for change, copy in _s2ef_malformed(frames).items():
        path = write_s2ef(tmp_path / "malformed" / change.replace(" ", "_"), s2ef_text(copy), 6)
        outcome = in_child(_read_s2ef(path, reference))
        outcomes["malformed " + change] = record("s2ef malformed", change, outcome)
        assert outcome.kind != "ok", (change, outcome.text)
    check(outcomes, str(tmp_path), ok="same")


# -- tar.gz archives (dens data extract NAME --archive-path FILE --out DIR) ----------------------
def _extract(archive: Path, out: Path, files: dict[str, bytes]) -> Callable[[], str]:
    def call() -> str:
        try:
            from dens.data.download.extract import extract
        except ImportError:  # older checkouts: one module dens.data.download
            from dens.data.download import extract

        extract(archive, out, "tar.gz")
        for name, content in files.items():
            if (out / name).read_bytes() != content:
                return f"different: {name}"
        return "same"

    return call


def test_damaged_tar_gz_archive(tmp_path: Path) -> None:
    rng = np.random.default_rng(SEED)
    files = {
        f"lmdbs/{name}": (" ".join(f"{x:.4f}" for x in rng.normal(size=n))).encode()
        for name, n in (("a.txt", 3000), ("b/c.txt", 5000), ("d.bin", 100))
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    outcomes = {}
    for label, data in damaged(buffer.getvalue(), random.Random(SEED), 12).items():
        archive = tmp_path / label.replace(" ", "_") / "archive.tar.gz"
        archive.parent.mkdir()
        archive.write_bytes(data)
        outcome = in_child(_extract(archive, archive.parent / "out", files))
        outcomes[label] = record("tar.gz", label, outcome)
    check(outcomes, str(tmp_path), ok="same")


# -- malformed structures: the ASE calculator ----------------------------------------------------
STRUCTURE_CHANGES = (
    "nan position",
    "inf position",
    "nan cell",
    "no atom",
    "one atom",
    "Z=0",
    "Z=119",
    "Z=150",
    "huge cell",
    "atom 1e9 Å away",
    "overlapping atoms",
)


def malformed(atoms: ase.Atoms, change: str, rng: random.Random) -> ase.Atoms:
    atoms = atoms.copy()
    i = rng.randrange(len(atoms)) if len(atoms) else 0
    if change == "nan position" and len(atoms):
        atoms.positions[i, rng.randrange(3)] = np.nan
    elif change == "inf position" and len(atoms):
        atoms.positions[i, rng.randrange(3)] = rng.choice([np.inf, -np.inf])
    elif change == "nan cell":
        cell = np.eye(3) * 12.0
        cell[rng.randrange(3), rng.randrange(3)] = np.nan
        atoms.cell, atoms.pbc = cell, True
    elif change == "no atom":
        del atoms[:]
    elif change == "one atom":
        atoms = atoms[i : i + 1]
    elif change.startswith("Z=") and len(atoms):
        atoms.numbers[i] = int(change[2:])
    elif change == "huge cell":
        atoms.set_cell(np.eye(3) * 12.0 * 10.0 ** rng.randint(4, 12), scale_atoms=False)
        atoms.pbc = True
    elif change == "atom 1e9 Å away" and len(atoms):
        atoms.positions[i] = [1e9, 0.0, 0.0]
    elif change == "overlapping atoms" and len(atoms) > 1:
        atoms.positions[i] = atoms.positions[(i + 1) % len(atoms)]
    return atoms


def _energy(
    atoms: ase.Atoms, calculator: ase.calculators.calculator.Calculator
) -> Callable[[], str]:
    """The calculator's energy and forces; a success must be finite and from finite input."""

    def call() -> str:
        atoms.calc = calculator
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        finite_input = np.isfinite(atoms.positions).all() and np.isfinite(atoms.cell.array).all()
        finite_output = np.isfinite(energy) and np.isfinite(forces).all()
        return "answered" if finite_output and finite_input else f"answered {energy} for {atoms}"

    return call


def test_malformed_structures_given_to_the_calculator(md17_run: dict[str, Path]) -> None:
    """Each malformed change alone, then 16 of two or three at once. Before: a NaN or inf
    position gave the molecule's finite energy; 0 or 1 atoms a reshape error, Z = 150 an
    IndexError, a 1e8-scaled cell a MemoryError, an atom 1e9 Å away an AssertionError."""
    from dens.calculator import DeNSCalculator

    calculator = DeNSCalculator(md17_run["run"])
    rng = random.Random(SEED)
    base = ase.build.molecule("CH3CH2OH")
    outcomes = {}
    for change in STRUCTURE_CHANGES:
        atoms = malformed(base, change, rng)
        outcomes[change] = record("calculator", change, in_child(_energy(atoms, calculator)))
    for index in range(16):
        changes = rng.sample(STRUCTURE_CHANGES, rng.randint(2, 3))
        atoms = base
        for change in changes:
            atoms = malformed(atoms, change, rng)
        label = f"{index:02d} " + " + ".join(changes)
        outcomes[label] = record("calculator", label, in_child(_energy(atoms, calculator)))
    # every case above is malformed: none may be answered
    check(outcomes, "", ok=None)


# -- malformed structures: dens relax ------------------------------------------------------------
RELAX = "oc22/eqv2-dens-127m"


@pytest.fixture(scope="module")
def oc22_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained smoke oc22/eqv2-dens-127m run (best.pt of the registered model, trained on
    Cu, C and O as far as its normaliser says)."""
    from dens.checkpoint import FORMAT_VERSION, save_checkpoint
    from dens.models import build_model
    from dens.normalization import NUM_ELEMENTS, Normalizer
    from dens.pipeline.registry import load_registry

    experiment = load_registry({"scale": "smoke"}).resolve(RELAX)
    counts = torch.zeros(2, NUM_ELEMENTS)
    counts[:, 29], counts[:, 6], counts[:, 8] = 12, 1, 1
    energies = torch.tensor([-1.0, -2.0], dtype=torch.float64)
    best = {
        "format_version": FORMAT_VERSION,
        "kind": "best",
        "experiment": experiment,
        "epoch": 1,
        "step": 1,
        "normalizer": Normalizer.fit(energies, counts, "mean").to_dict(),
        "num_parameters": 1,
        "model": build_model(experiment).state_dict(),
        "weights": "model",
        "val": {"energy_mae_meV": 0.0, "forces_mae_meV_per_A": 0.0},
    }
    run = tmp_path_factory.mktemp("oc22_run")
    save_checkpoint(best, run / "checkpoints" / "best.pt")
    return run


def relax_splits(directory: Path, atoms: ase.Atoms) -> list[Path]:
    """is2re_test_id.aselmdb with ``atoms`` (sid 7) and is2re_test_ood.aselmdb with a valid
    slab, as `dens data prepare oc22` writes relax splits."""
    from dens.data.aselmdb import write_aselmdb

    paths = []
    for split, system in (("is2re_test_id", atoms), ("is2re_test_ood", slabs(1, seed=5)[0])):
        system = system.copy()
        system.info = {"sid": 7 if split.endswith("id") else 8}
        path = directory / f"{split}.aselmdb"
        write_aselmdb(path, [system], required_results=())
        manifest(path)
        paths.append(path)
    return paths


def _relax(run: Path, splits: list[Path]) -> Callable[[], str]:
    def call() -> str:
        from dens.pipeline.cli import main

        with _no_cuda():
            argv = ["relax", RELAX, *SMOKE, "--run-dir", str(run), *map(str, splits)]
            code = main(argv)
        if code != 0:
            sys.stdout.flush()
            os._exit(code)  # its one line is printed already
        return "relaxed"

    return call


def test_malformed_systems_given_to_dens_relax(oc22_run: Path, tmp_path: Path) -> None:
    """Before: a NaN position or an unknown element ended in a traceback naming no sid; a 0-atom
    system was "relaxed" and reported with an energy."""
    rng = random.Random(SEED)
    base = slabs(1, seed=4)[0]
    outcomes = {}
    for change in ("nan position", "nan cell", "no atom", "Z=150", "huge cell"):
        splits = relax_splits(tmp_path / change.replace(" ", "_"), malformed(base, change, rng))
        outcome = in_child(_relax(oc22_run, splits))
        outcomes[change] = record("dens relax", change, outcome)
    check(outcomes, "is2re_test_id.aselmdb", ok=None)


# -- the commands users run, as subprocesses -----------------------------------------------------
def test_a_handful_of_cases_through_python_dash_m_dens(
    md17_run: dict[str, Path], tmp_path: Path
) -> None:
    """One case of each file kind through `python -m dens`, run two at a time: exit status 2 and
    one line naming the damaged file (no SIGBUS, no traceback)."""
    rng = random.Random(SEED + 99)
    run, val = md17_run["run"], md17_run["val"]
    # a validation split without a manifest (checked page by page, then read by LMDB): 16
    # random bytes at the start of its last page
    val_damaged = write_split(tmp_path / "split" / "val.aselmdb", 60, seed=7)
    data = bytearray(val_damaged.read_bytes())
    page = (len(data) // 4096 - 1) * 4096
    data[page : page + 16] = rng.randbytes(16)
    val_damaged.write_bytes(bytes(data))
    # best.pt of the run with 16 bytes in its middle
    checkpoint_run = tmp_path / "run"
    best = checkpoint_run / "checkpoints" / "best.pt"
    best.parent.mkdir(parents=True)
    data = bytearray((run / "checkpoints" / "best.pt").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 16] = rng.randbytes(16)
    best.write_bytes(bytes(data))
    # an MD17 npz cut short, a tar.gz with 16 bytes in its middle
    npz = md17_npz(tmp_path / "npz" / "md17_ethanol.npz", frames=1001)
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    # (OC22 IS2RE-Total's: its 424M extracted pass the free-space check on any test machine,
    # which OC20 S2EF test's 415G would refuse before the archive is read)
    archive = tmp_path / "archive" / "is2res_total_train_val_test_lmdbs.tar.gz"
    archive.parent.mkdir()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        content = " ".join(map(str, range(20000))).encode()
        info = tarfile.TarInfo("s2ef_test_lmdbs/a.txt")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    data = bytearray(buffer.getvalue())
    data[len(data) // 2 : len(data) // 2 + 16] = rng.randbytes(16)
    archive.write_bytes(bytes(data))
    cases = {
        "dens train, damaged --val": (
            ["train", EXPERIMENT, *SMOKE, "--run-dir", str(tmp_path / "new"),
             "--train", str(md17_run["train"]), "--val", str(val_damaged)], val_damaged),
        "dens evaluate, damaged best.pt": (
            ["evaluate", EXPERIMENT, *SMOKE, "--run-dir", str(checkpoint_run), str(val)], best),
        "dens data prepare, npz cut short": (
            ["data", "prepare", "md17-ethanol", str(npz), "--scale", "paper",
             "--out-dir", str(tmp_path / "prepared")], npz),
        "dens data extract, damaged tar.gz": (
            ["data", "extract", "oc22_is2re_total_lmdbs", "--archive-path", str(archive),
             "--out", str(tmp_path / "extracted")], archive),
    }  # fmt: skip
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        done = pool.map(dens_subprocess, [argv for argv, _ in cases.values()])
        results = dict(zip(cases, done, strict=True))
    outcomes = {name: record("python -m dens", name, results[name]) for name in cases}
    bad = {
        name: f"{outcome.kind}: {outcome.text.strip()[-400:]}"
        for name, outcome in outcomes.items()
        if outcome.kind != "error" or str(cases[name][1]) not in outcome.text
    }
    assert not bad, bad
