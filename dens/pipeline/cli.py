"""``dens``: the command-line tool the pipeline's jobs call, usable by hand too.

    dens experiments [--scale S]                       list every experiment
    dens sources EXPERIMENT [--scale S]                each value of the run with its source
    dens params EXPERIMENT                             trainable parameters (paper scale)
    dens data download NAME --out FILE [--mirror URL]  download and verify one archive
    dens data extract NAME --archive-path FILE --out DIR
    dens data prepare DATASET [INPUTS...] --scale S --out-dir DIR
    dens train EXPERIMENT --scale S --seed N --train FILE --val FILE [--run-dir DIR]
                                  (one process per GPU: torchrun or srun, see dens.distributed;
                                  --continue-before-time-limit S: across Slurm jobs,
                                  dens.pipeline.slurm)
    dens evaluate EXPERIMENT --scale S --seed N [--run-dir DIR] SPLIT_FILE...
    dens submission EXPERIMENT --scale S --seed N [--run-dir DIR] TEST_SPLIT_FILE...
    dens relax EXPERIMENT --scale S --seed N [--run-dir DIR] RELAX_SPLIT_FILE...
    dens simulate EXPERIMENT --scale S --seed N [--run-dir DIR] --initial TEST_SPLIT SPLIT...
    dens table NAME --scale S --out-dir DIR            (published: dens.pipeline.tables.published)
    dens figure NAME --scale S --out FILE STRUCTURE_FILE...
    dens curves TABLE --scale S --out FILE.png          learning curves of a table's runs
    dens report --scale S --out FILE.html               every table, figure and curve

Each command parses its arguments (dens.pipeline.parsers, a function per command) and calls the
library (dens.pipeline.commands); the pipeline's rules hand jobs their input files
(dens.pipeline.paths). Errors a user can cause are the library's own (dens.errors) and are printed
as one line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dens.errors import (
    DensError,
    DeviceError,
    MissingDataError,
    name_remedies,
)
from dens.pipeline import paths, remedies
from dens.pipeline.parsers import COMMANDS


def _resolve_device(name: str | None) -> str:
    """--device: "cuda" where CUDA is available and "cpu" elsewhere when not given; a device this
    machine does not have raises DeviceError."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise DeviceError(f"--device {name!r}: not a torch device (cpu, cuda or cuda:N)") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "a CPU-only build of torch" if torch.version.cuda is None else "no GPU visible"
            raise DeviceError(
                f"--device {name}: CUDA is not available on this machine (torch "
                f"{torch.__version__}: {why}); use --device cpu or leave --device out"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(
                f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to "
                f"cuda:{count - 1}"
            )
    elif device.type != "cpu":
        raise DeviceError(f"--device {name}: dens runs on cpu or cuda")
    return name


def _check_inputs(args: argparse.Namespace) -> None:
    """Input files named on the command line exist (aselmdb splits are checked by
    dens.data.aselmdb, with how to rebuild them); raise MissingDataError naming the first that
    does not."""
    if getattr(args, "data_command", None) == "extract" and not args.archive_path.is_file():
        from dens.data.download.catalog import get_archive, load_catalog

        get_archive(load_catalog(), args.archive)  # an unknown name first
        raise MissingDataError(
            f"archive not found: {args.archive_path}; download it first with "
            f"`dens data download {args.archive} --out {args.archive_path}`"
        )
    if getattr(args, "data_command", None) == "prepare":
        for path in args.inputs:
            if not path.exists():
                raise MissingDataError(f"input not found: {path}")
    if getattr(args, "data_command", None) == "convert-group" and not args.archive_dir.is_dir():
        raise MissingDataError(f"extracted archive not found: {args.archive_dir}")
    if args.command == "figure":
        from dens.data.split_folder import check_split

        for path in args.structures:
            check_split(Path(path))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dens", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for add_command in COMMANDS:
        add_command(commands)
    return parser


def _one_line(error: BaseException) -> str:
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def _user_error(error: BaseException) -> BaseException | None:
    """The error ``dens`` prints as one line for ``error``, or None for a bug (its traceback is
    shown): a write that found its folder full or read-only and that no dens.atomic_files helper
    reported (a RuntimeError of torch holds the OSError in its context) becomes a DiskError."""
    from dens.atomic_files import disk_cause, disk_error

    if isinstance(error, DensError):
        return error
    cause = disk_cause(error)
    if cause is not None and not isinstance(error, PermissionError):
        return disk_error(cause, None, "writing")
    if isinstance(error, (FileNotFoundError, FileExistsError, PermissionError)):
        return error
    return None


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The command line parsed; the input files of `dens data prepare DATASET [options] FILE...`
    (the data rules' order) joined to its ``inputs``: Python 3.11's argparse fills a ``*``
    positional at the first positional (``DATASET``) with nothing and leaves files after an
    option unrecognised (fixed in later versions, which leave nothing over)."""
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "data_command", None) == "prepare":
        if not any(item.startswith("-") for item in extra):
            args.inputs = [*args.inputs, *map(Path, extra)]
            return args
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one command; an error a user can cause is printed as one line (exit status 2), a
    missing or damaged file of the pipeline's layout with its Snakemake target
    (dens.pipeline.remedies, named for the command's duration)."""
    args = _parse(build_parser(), argv)
    if getattr(args, "run_dir", "") is None:  # a job of the pipeline: its run's directory
        args.run_dir = Path(paths.run(args.scale, args.experiment, args.seed).path)
    name_remedies(remedies.for_job(args))
    try:
        return _run(args)
    finally:
        name_remedies(None)


def _run(args: argparse.Namespace) -> int:
    try:
        if hasattr(args, "device"):
            args.device = _resolve_device(args.device)
        _check_inputs(args)
        args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`dens experiments | head -1`): stop quietly, and point stdout at
        # devnull so that Python's final flush does not fail again (Python docs, signal module).
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    except KeyboardInterrupt:
        print("dens: interrupted", file=sys.stderr)
        return 130
    except (DensError, OSError, RuntimeError) as error:
        shown = _user_error(error)
        if shown is None:
            raise
        print(f"dens: error: {_one_line(shown)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
