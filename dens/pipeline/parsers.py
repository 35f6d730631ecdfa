"""The ``dens`` command's parser, one function per command (``add_<command>``, which
:func:`dens.pipeline.cli.build_parser` calls in order), each naming its command's function
(dens.pipeline.commands)."""

from __future__ import annotations

import argparse
from pathlib import Path, PurePosixPath
from typing import Any

from dens.layout import RunDirectory
from dens.pipeline.commands import (
    cmd_curves,
    cmd_data_convert_group,
    cmd_data_download,
    cmd_data_extract,
    cmd_data_prepare,
    cmd_evaluate,
    cmd_experiments,
    cmd_figure,
    cmd_import_checkpoint,
    cmd_params,
    cmd_relax,
    cmd_report,
    cmd_simulate,
    cmd_sources,
    cmd_submission,
    cmd_table,
    cmd_train,
)


def _add_config_options(parser: argparse.ArgumentParser, scale_default: str | None = None) -> None:
    parser.add_argument(
        "--scale",
        default=scale_default,
        required=scale_default is None,
        help="paper, mini or smoke (config/scales/)",
    )
    parser.add_argument(
        "--data-seed", type=int, help="seed of generated data (default: the scale's)"
    )
    parser.add_argument(
        "--extra-experiments", action="append", default=[], help="extra experiment file(s)"
    )
    _add_catalog_option(parser)


def _add_catalog_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--catalog",
        help="a stand-in archive catalog over config/archives.yaml (config `catalog`; the "
        "rehearsal's generated archives)",
    )


def _add_job_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment")
    parser.add_argument(
        "--seed", type=int, default=0, help="training seed of the run (its directory: seed<S>)"
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        help="the run's directory (default: the pipeline's, results/{scale}/runs/{experiment}/"
        "seed{seed}, relative to the working directory)",
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of torch")
    parser.add_argument(
        "--device", default=None, help="cpu, cuda or cuda:N (default: cuda where available)"
    )
    _add_config_options(parser)


def _add_continuation_option(parser: argparse.ArgumentParser, state: str) -> None:
    parser.add_argument(
        "--continue-before-time-limit",
        type=float,
        metavar="SECONDS",
        help=f"in a Slurm job: stop this long before the job's time limit, save {state} and "
        "requeue the job, which resumes there (dens.pipeline.slurm)",
    )


def _with_config(p: argparse.ArgumentParser, func: Any) -> None:
    """The end of a command's parser that loads the registry: the config options, its function."""
    _add_config_options(p)
    p.set_defaults(func=func)


def _with_seeds(p: argparse.ArgumentParser, func: Any) -> None:
    """``_with_config`` for a command that reads every seed's runs (tables, curves, report)."""
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="the training seeds whose runs it reads (config `seeds`; default: config.yaml's)",
    )
    _with_config(p, func)


def add_experiments(commands: Any) -> None:
    p = commands.add_parser("experiments", help="list every experiment")
    _add_config_options(p, scale_default="paper")
    p.set_defaults(func=cmd_experiments)


def add_sources(commands: Any) -> None:
    p = commands.add_parser(
        "sources", help="each value of an experiment's run with its source (official file, paper)"
    )
    p.add_argument("experiment")
    _add_config_options(p, scale_default="paper")
    p.set_defaults(func=cmd_sources)


def add_params(commands: Any) -> None:
    p = commands.add_parser("params", help="trainable parameters of the paper-scale model")
    p.add_argument("experiment")
    p.set_defaults(func=cmd_params, scale="paper")


def add_data(commands: Any) -> None:
    data = commands.add_parser("data", help="download, extract and prepare datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    p = data_commands.add_parser("download", help="download and verify one archive")
    p.add_argument("archive", help="name in config/archives.yaml")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument(
        "--mirror", help="fetch from this http(s) base URL instead of the owners' host (same path)"
    )
    _add_catalog_option(p)
    p.set_defaults(func=cmd_data_download)
    p = data_commands.add_parser("extract", help="extract one verified archive")
    p.add_argument("archive", help="name in config/archives.yaml")
    p.add_argument("--archive-path", required=True, type=Path, help="the downloaded file")
    p.add_argument("--out", required=True, type=Path)
    _add_catalog_option(p)
    p.set_defaults(func=cmd_data_extract)
    p = data_commands.add_parser(
        "prepare", help="write a dataset's split folders of aselmdb shards"
    )
    p.add_argument("dataset", help="name in config/datasets.yaml")
    p.add_argument(
        "inputs",
        nargs="*",
        type=Path,
        help="paper scale: the conversion jobs' group records (data convert-group), or extracted "
        "archive directories (converted here), or the MD17 npz",
    )
    p.add_argument("--out-dir", required=True)
    p.add_argument("--threads", type=int, default=1)
    _add_config_options(p)
    p.set_defaults(func=cmd_data_prepare)
    p = data_commands.add_parser(
        "convert-group",
        help="convert group G of an extracted OC20/OC22 archive's source files into shards",
    )
    p.add_argument("dataset", help="name in config/datasets.yaml")
    p.add_argument("archive_dir", type=Path, help="the extracted archive directory")
    p.add_argument("--group", required=True, type=int, help="0 .. groups - 1")
    p.add_argument("--groups", required=True, type=int, help="G: the archive's conversion jobs")
    p.add_argument("--out-dir", required=True, help="the dataset directory")
    p.add_argument("--threads", type=int, default=1, help="worker processes")
    _add_config_options(p)
    p.set_defaults(func=cmd_data_convert_group)


def add_train(commands: Any) -> None:
    p = commands.add_parser("train", help="train one experiment")
    _add_job_options(p)
    p.add_argument("--train", required=True, type=Path, help="training split (aselmdb)")
    p.add_argument("--val", required=True, type=Path, help="validation split (aselmdb)")
    p.add_argument(
        "--mixed-precision",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="float16 autocast + gradient scaling (default: the experiment's "
        "optim.mixed_precision with CUDA: on for OC20/OC22, off for MD17; off on CPU)",
    )
    p.add_argument(
        "--evaluate",
        nargs="+",
        type=Path,
        default=[],
        metavar="SPLIT",
        help="after training, score the best checkpoint on these splits (folders of aselmdb "
        "shards, or aselmdb files) into metrics.json in the same process, as `dens evaluate` "
        "would (one training process only)",
    )
    _add_continuation_option(
        p, f"the training state ({RunDirectory(PurePosixPath()).checkpoint('last')})"
    )
    p.set_defaults(func=cmd_train)


def _add_split_job(
    commands: Any, name: str, about: str, splits: str, func: Any
) -> argparse.ArgumentParser:
    """The parser of a command of one run on split files: the job options, then the files."""
    p = commands.add_parser(name, help=about)
    _add_job_options(p)
    p.add_argument("splits", nargs="+", type=Path, help=splits)
    p.set_defaults(func=func)
    return p


def add_evaluate(commands: Any) -> None:
    about = "score a trained run on held-out splits"
    _add_split_job(
        commands, "evaluate", about, "splits (folders of aselmdb shards, or files)", cmd_evaluate
    )


def add_submission(commands: Any) -> None:
    about = "write the S2EF test submission file for the evaluation server"
    _add_split_job(
        commands,
        "submission",
        about,
        "test splits (folders of aselmdb shards, or files)",
        cmd_submission,
    )


def add_import_checkpoint(commands: Any) -> None:
    p = commands.add_parser(
        "import-checkpoint",
        help="a fairchem 1.x checkpoint as a dens run (evaluate it, use it in ASE)",
    )
    p.add_argument("checkpoint", type=Path, help="the fairchem 1.x checkpoint file (.pt)")
    p.add_argument(
        "--energy-reference-file",
        type=Path,
        help="the linear energy reference (npz) of a checkpoint trained on energies minus one "
        "(default: the experiment's optim.energy_reference_file)",
    )
    _add_job_options(p)
    p.set_defaults(func=cmd_import_checkpoint)


def add_relax(commands: Any) -> None:
    about = "IS2RE: relax the initial structures of the relax splits with a run"
    p = _add_split_job(
        commands, "relax", about, "relax splits (folders of aselmdb shards, or files)", cmd_relax
    )
    _add_continuation_option(p, "the finished systems")


def add_simulate(commands: Any) -> None:
    p = commands.add_parser(
        "simulate", help="MD simulations of a trained MD17 run: stability and h(r) (Table 10)"
    )
    _add_job_options(p)
    p.add_argument(
        "--initial",
        action="append",
        required=True,
        type=Path,
        help="split the initial configurations are drawn from (split folder or aselmdb file; "
        "the test split)",
    )
    p.add_argument(
        "reference",
        nargs="+",
        type=Path,
        help="reference data for bond lengths and h(r) (split folders or aselmdb files; every "
        "split of the dataset)",
    )
    _add_continuation_option(p, "the simulation state")
    p.set_defaults(func=cmd_simulate)


def add_table(commands: Any) -> None:
    p = commands.add_parser("table", help="write one paper table (CSV, Markdown, LaTeX)")
    p.add_argument("table", help="table1a, table1b, table2 ... table10, or published")
    p.add_argument("--out-dir", required=True)
    _with_seeds(p, cmd_table)


def add_figure(commands: Any) -> None:
    p = commands.add_parser("figure", help="draw one of the paper's figures 3-5")
    p.add_argument("figure", help="figure3, figure4 or figure5")
    p.add_argument("--out", required=True, help="the PNG file (the PDF goes beside it)")
    p.add_argument("structures", nargs="+", help="each dataset's training split (aselmdb)")
    _with_config(p, cmd_figure)


def add_curves(commands: Any) -> None:
    p = commands.add_parser("curves", help="learning curves of one table's runs (PNG and PDF)")
    p.add_argument("table", help="a results table: table1a ... table6, table10")
    p.add_argument("--out", required=True, help="the .png file (the .pdf goes beside it)")
    _with_seeds(p, cmd_curves)


def add_report(commands: Any) -> None:
    p = commands.add_parser("report", help="the HTML report: every table, figure and curve")
    p.add_argument("--out", required=True, help="the .html file")
    p.add_argument(
        "--published",
        action="store_true",
        help="with the table of the published checkpoints (dens.pipeline.published)",
    )
    _with_seeds(p, cmd_report)


COMMANDS = (
    add_experiments,
    add_sources,
    add_params,
    add_data,
    add_train,
    add_evaluate,
    add_submission,
    add_import_checkpoint,
    add_relax,
    add_simulate,
    add_table,
    add_figure,
    add_curves,
    add_report,
)
"""Each command's ``add_<command>``, in the order ``dens --help`` lists them."""
