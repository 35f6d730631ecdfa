"""``python -m dens.pipeline.rehearsal {generate,run,timings}`` (the Makefile's `rehearsal`
target runs ``run``): see dens.pipeline.rehearsal.run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dens.pipeline.rehearsal.run import DEFAULT_TARGETS, generated_catalog, rehearse, timings


def _volume_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--eval-frames", type=int, default=4, help="frames per evaluation split (default 4)"
    )
    parser.add_argument(
        "--relax-systems", type=int, default=2, help="systems per IS2RE sub-split (default 2)"
    )
    parser.add_argument(
        "--md17-test-frames", type=int, default=10, help="MD17 test frames (default 10)"
    )
    parser.add_argument(
        "--slab-cells",
        type=int,
        default=2,
        help="OC slabs of N x N surface cells, 3 layers, + CO (default 2: 14 atoms; 1: 5 atoms)",
    )
    parser.add_argument("--fresh", action="store_true", help="generate the archives again")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the command; the exit status."""
    parser = argparse.ArgumentParser(prog="python -m dens.pipeline.rehearsal")
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="generate the archives and their catalog")
    _volume_options(generate)
    run = commands.add_parser("run", help="generate, serve, Slurm, snakemake (make rehearsal)")
    _volume_options(run)
    run.add_argument("targets", nargs="*", default=list(DEFAULT_TARGETS))
    run.add_argument("--account", help="Slurm account (default: none, no accounting)")
    run.add_argument(
        "--jobs",
        type=int,
        help="Slurm jobs at a time (default: the profile's); each training job at the paper "
        "presets may take more memory than its CPU-scale request (README)",
    )
    run.add_argument(
        "--job-mem-mb",
        type=int,
        help="the most memory (MB) a job asks Slurm for (default: the node's, so that a training "
        "job at the paper presets runs alone); e.g. 11000 lets two trainings share a 23 GB node "
        "(the largest measured: 9.6 GB, README)",
    )
    commands.add_parser("timings", help="wall time and peak memory per job family")
    args = parser.parse_args(argv)
    if args.command == "timings":
        print("\n".join(timings(Path.cwd())))
        return 0
    volume = {
        "eval_frames": args.eval_frames,
        "relax_systems": args.relax_systems,
        "md17_test_frames": args.md17_test_frames,
        "slab_cells": args.slab_cells,
    }
    if args.command == "generate":
        print(generated_catalog(Path.cwd(), volume, fresh=args.fresh))
        return 0
    slurm = {"account": args.account, "jobs": args.jobs, "job_mem_mb": args.job_mem_mb}
    return rehearse(args.targets, volume, fresh=args.fresh, **slurm)


if __name__ == "__main__":
    sys.exit(main())
