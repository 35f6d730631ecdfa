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

Each command parses its arguments and calls the library; the pipeline's rules hand jobs their
input files (dens.pipeline.paths). Errors a user can cause are the library's own (dens.errors) and
are printed as one line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path, PurePosixPath
from typing import Any

from dens.errors import (
    ConfigError,
    DensError,
    DeviceError,
    InvalidDataError,
    MissingDataError,
    name_remedies,
)
from dens.layout import RunDirectory
from dens.pipeline import paths, remedies
from dens.pipeline.registry import Registry, load_registry


def registry_from(args: argparse.Namespace, scale: str | None = None) -> Registry:
    options: dict[str, Any] = {"scale": scale or args.scale}
    if getattr(args, "data_seed", None) is not None:
        options["data_seed"] = args.data_seed
    if getattr(args, "extra_experiments", None):
        options["extra_experiments"] = args.extra_experiments
    return load_registry(options)


def _set_threads(threads: int) -> None:
    import torch

    if threads < 1:
        raise ConfigError(f"--threads {threads}: needs at least 1 thread")
    torch.set_num_threads(threads)


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
    if args.command == "figure":
        from dens.data.aselmdb_integrity import check_aselmdb

        for path in args.structures:
            check_aselmdb(Path(path))


# -- commands ------------------------------------------------------------------------------------
def cmd_experiments(args: argparse.Namespace) -> None:
    registry = registry_from(args)
    for name, experiment in registry.experiments.items():
        dens = "DeNS" if experiment["dens"] else "no DeNS"
        model = experiment["model"]
        print(f"{name}\t{model['family']}/{model['preset']}\t{dens}\t{experiment['source']}")


def cmd_sources(args: argparse.Namespace) -> None:
    """Each value of the resolved run (and its relaxation settings) with where it comes from."""
    from dens.pipeline.registry import leaf_paths

    registry = registry_from(args)
    resolved = registry.resolve(args.experiment)
    values = {k: resolved[k] for k in ("dataset", "model", "optim", "dens", "resources")}
    relax = registry.relax_settings(args.experiment)
    if relax is not None:
        values["relax"] = relax
    sources = registry.value_sources(args.experiment)
    described = registry.experiment(args.experiment)["source"]
    print(f"# {args.experiment} at scale {registry.scale_name}: {described}")
    for path in leaf_paths(values):
        value: Any = values
        for part in path.split("."):
            value = value[part]
        print(f"{path}\t{value!r}\t{sources.get(path, 'NO SOURCE')}")


def cmd_params(args: argparse.Namespace) -> None:
    from dens.models import build_model, count_parameters

    resolved = registry_from(args, scale="paper").resolve(args.experiment)
    model = resolved["model"]
    count = count_parameters(build_model(resolved))
    dens = " + DeNS" if resolved["dens"] else ""
    print(
        f"{count}\t{count / 1e6:.2f}M trainable parameters: {args.experiment} "
        f"({model['family']} preset {model['preset']}{dens}, paper scale)"
    )


def cmd_data_download(args: argparse.Namespace) -> None:
    from dens.data.download.catalog import get_archive, load_catalog
    from dens.data.download.transfer import download_archive

    download_archive(get_archive(load_catalog(), args.archive), args.out, args.mirror)


def cmd_data_extract(args: argparse.Namespace) -> None:
    from dens.data.download.catalog import get_archive, load_catalog
    from dens.data.download.extract import extract

    archive = get_archive(load_catalog(), args.archive)
    extract(args.archive_path, args.out, archive.format)


def cmd_data_prepare(args: argparse.Namespace) -> None:
    from dens.data.prepare import prepare_dataset

    settings = registry_from(args).data_settings(args.dataset)
    _set_threads(args.threads)
    prepare_dataset(settings, Path(args.out_dir), args.inputs, args.threads)


def cmd_train(args: argparse.Namespace) -> None:
    from dens.data.aselmdb import AseLmdbDataset
    from dens.distributed import World
    from dens.pipeline import slurm
    from dens.runs import keep_outputs
    from dens.train import train

    experiment = registry_from(args).resolve(args.experiment, args.seed)
    _set_threads(args.threads)
    world = World.from_environment()
    if args.evaluate and world.size > 1:
        raise ConfigError(
            f"dens train --evaluate: {world.size} training processes; evaluate a run trained by "
            "several processes with `dens evaluate` (one process) after training"
        )
    train_set, val_set = AseLmdbDataset(args.train), AseLmdbDataset(args.val)
    _refuse_empty(train_set, "training")
    _refuse_empty(val_set, "validation")
    # A bad path fails before training; the validation split, if scored too, is read once.
    evaluation_splits = _open_splits(args.evaluate, opened={Path(args.val): val_set})
    history = Path(args.run_dir) / slurm.HISTORY_FILE
    try:
        with slurm.continuation(args.continue_before_time_limit, history, world.is_main) as stop:
            result = train(
                experiment,
                train_set,
                val_set,
                Path(args.run_dir),
                device=args.device,
                mixed_precision=args.mixed_precision,
                stop_at=stop,
            )
        if not world.is_main:  # one summary, not one per training process
            return
        print(
            f"{args.experiment}: {result.epochs} epochs, best validation force MAE "
            f"{result.best_val_forces_mae_meV_per_A:.2f} meV/Å (epoch {result.best_epoch})"
        )
        if evaluation_splits:
            _evaluate(args.experiment, Path(args.run_dir), evaluation_splits, args.device)
    finally:
        # Also when stopped (SIGTERM, time limit): a later job that moves the run aside gets
        # back what Snakemake deleted before it (dens.runs.move_aside).
        if world.is_main and Path(args.run_dir).is_dir():
            keep_outputs(Path(args.run_dir))


def cmd_evaluate(args: argparse.Namespace) -> None:
    registry_from(args).resolve(args.experiment)
    _set_threads(args.threads)
    _evaluate(args.experiment, Path(args.run_dir), _open_splits(args.splits), args.device)


def _open_splits(split_paths: list[Path], opened: dict[Path, Any] | None = None) -> dict[str, Any]:
    """{file stem: dataset} of aselmdb split files (a missing or damaged file raises DataError);
    files in ``opened`` ({path: dataset}) are not read again."""
    from dens.data.aselmdb import AseLmdbDataset

    opened = opened or {}
    splits = {
        Path(p).stem: opened[Path(p)] if Path(p) in opened else AseLmdbDataset(p)
        for p in split_paths
    }
    for dataset in splits.values():
        _refuse_empty(dataset, "evaluation")
    return splits


def _refuse_empty(dataset: Any, role: str) -> None:
    """An aselmdb split without a structure raises InvalidDataError naming the file, before a
    run trains for hours on it (an empty validation split) or scores nothing."""
    from dens.data.aselmdb_integrity import REBUILD

    if len(dataset) == 0:
        raise InvalidDataError(
            f"{dataset.path}: the {role} split holds no structure", dataset.path, REBUILD
        )


def _evaluate(experiment: str, run_dir: Path, splits: dict[str, Any], device: str) -> None:
    """metrics.json of run_dir's best checkpoint on the splits, and a one-line summary."""
    from dens.evaluate import evaluate

    metrics = evaluate(run_dir, splits, device=device)
    print(
        f"{experiment} on {metrics['split']}: energy MAE {metrics['energy_mae_meV']:.2f} "
        f"meV, force MAE {metrics['forces_mae_meV_per_A']:.2f} meV/Å (zero forces: "
        f"{metrics['zero_forces_mae_meV_per_A']:.2f})"
    )


def cmd_import_checkpoint(args: argparse.Namespace) -> None:
    from dens.pipeline.checkpoint_import import import_checkpoint

    state = import_checkpoint(
        args.checkpoint,
        args.run_dir,
        registry_from(args),
        args.experiment,
        args.seed,
        args.energy_reference_file,
    )
    print(
        f"{args.checkpoint} -> {RunDirectory(Path(args.run_dir)).checkpoint()}: "
        f"{state['num_parameters']} "
        f"parameters ({state['weights']} weights), labelled {args.experiment}"
    )


def cmd_submission(args: argparse.Namespace) -> None:
    from dens.pipeline.challenges import challenge_for
    from dens.pipeline.submission import write_submission

    experiment = registry_from(args).resolve(args.experiment)
    challenge = challenge_for(experiment["dataset_family"])
    _set_threads(args.threads)
    files = {Path(path).stem: Path(path) for path in args.splits}
    metrics = write_submission(Path(args.run_dir), files, challenge, device=args.device)
    counts = ", ".join(f"{split} {n}" for split, n in metrics["num_structures"].items())
    scored = (
        f"; {metrics['metrics_source']}: energy MAE {metrics['energy_mae_meV']:.2f} meV, force "
        f"MAE {metrics['forces_mae_meV_per_A']:.2f} meV/Å"
        if metrics["metrics_source"]
        else "; no labels: upload it to the evaluation server"
    )
    print(f"{args.experiment}: {challenge.name} submission ({counts}){scored}")


def cmd_relax(args: argparse.Namespace) -> None:
    from dens.pipeline import slurm
    from dens.pipeline.challenges import challenge_for
    from dens.pipeline.is2re import relax_run
    from dens.relaxation.lbfgs import LBFGSSettings

    registry = registry_from(args)
    experiment = registry.resolve(args.experiment)
    challenge = challenge_for(experiment["dataset_family"], "is2re")
    relax = registry.relax_settings(args.experiment)
    if relax is None:
        raise ConfigError(
            f"dens relax {args.experiment}: the experiment has no relax settings (its dataset "
            f"{experiment['dataset']} has no relax splits)"
        )
    lbfgs = {k: relax[k] for k in ("max_steps", "fmax", "maxstep", "memory", "damping", "alpha")}
    _set_threads(args.threads)
    history = RunDirectory(Path(args.run_dir)).stage_dir("relax") / slurm.HISTORY_FILE
    with slurm.continuation(args.continue_before_time_limit, history) as stop_at:
        metrics = relax_run(
            Path(args.run_dir),
            {Path(path).stem: Path(path) for path in args.splits},
            challenge,
            LBFGSSettings(**lbfgs),
            relax["batch_size"],
            relax["max_systems"],
            device=args.device,
            stop_at=stop_at,
        )
    counts = ", ".join(f"{split} {n}" for split, n in metrics["num_systems"].items())
    scored = (
        f"; {metrics['metrics_source']}: relaxed-energy MAE {metrics['energy_mae_meV']:.1f} meV"
        if metrics["metrics_source"]
        else f"; no labels: upload {RunDirectory(Path(args.run_dir)).submission('relax')} to the "
        "evaluation server"
    )
    print(
        f"{args.experiment}: {challenge.name} relaxations ({counts}), "
        f"{100 * metrics['converged_fraction']:.0f}% converged, mean "
        f"{metrics['mean_steps']:.0f} steps{scored}"
    )


def cmd_simulate(args: argparse.Namespace) -> None:
    from dens.pipeline import slurm
    from dens.simulate import SimulationSettings, simulate_run

    registry = registry_from(args)
    experiment = registry.resolve(args.experiment, args.seed)
    if experiment["dataset_family"] != "md17":
        raise ConfigError(
            f"dens simulate {args.experiment}: simulations are of MD17 molecules (Table 10); "
            f"its dataset {experiment['dataset']} is of family {experiment['dataset_family']}"
        )
    settings = SimulationSettings.from_scale(registry.scale, registry.scale_name)
    _set_threads(args.threads)
    history = RunDirectory(Path(args.run_dir)).stage_dir("simulate") / slurm.HISTORY_FILE
    with slurm.continuation(args.continue_before_time_limit, history) as stop_at:
        metrics = simulate_run(
            args.run_dir, args.initial, args.reference, settings, args.seed, args.device, stop_at
        )
    print(
        f"{args.experiment}: stability {metrics['stability_ps']:g} ps of {settings.length_ps:g} "
        f"({metrics['stable_simulations']}/{settings.initial_configurations} simulations "
        f"stable), h(r) MAE {metrics['hr_mae']:.4f}"
    )


def cmd_table(args: argparse.Namespace) -> None:
    from dens.pipeline.published import TABLE
    from dens.pipeline.tables import write_table
    from dens.pipeline.tables.published import write_published_table

    registry = registry_from(args)
    if args.table == TABLE:  # the published checkpoints (config/published.yaml)
        written = write_published_table(registry, Path(args.out_dir))
    else:
        written = write_table(registry, args.table, Path(args.out_dir))
    for path in written:
        print(path)


def cmd_figure(args: argparse.Namespace) -> None:
    from dens.pipeline.figures import draw_figure

    registry = registry_from(args)
    draw_figure(
        args.figure, [Path(p) for p in args.structures], Path(args.out), registry.scale_name
    )


def cmd_curves(args: argparse.Namespace) -> None:
    from dens.pipeline.curves import draw_curves

    for path in draw_curves(registry_from(args), args.table, Path(args.out)):
        print(path)


def cmd_report(args: argparse.Namespace) -> None:
    from dens.pipeline.report import write_report

    print(write_report(registry_from(args), Path(args.out), published=args.published))


# -- parser --------------------------------------------------------------------------------------
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dens", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("experiments", help="list every experiment")
    _add_config_options(p, scale_default="paper")
    p.set_defaults(func=cmd_experiments)

    p = commands.add_parser(
        "sources", help="each value of an experiment's run with its source (official file, paper)"
    )
    p.add_argument("experiment")
    _add_config_options(p, scale_default="paper")
    p.set_defaults(func=cmd_sources)

    p = commands.add_parser("params", help="trainable parameters of the paper-scale model")
    p.add_argument("experiment")
    p.set_defaults(func=cmd_params, scale="paper")

    data = commands.add_parser("data", help="download, extract and prepare datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    p = data_commands.add_parser("download", help="download and verify one archive")
    p.add_argument("archive", help="name in config/archives.yaml")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument(
        "--mirror", help="fetch from this http(s) base URL instead of the owners' host (same path)"
    )
    p.set_defaults(func=cmd_data_download)
    p = data_commands.add_parser("extract", help="extract one verified archive")
    p.add_argument("archive", help="name in config/archives.yaml")
    p.add_argument("--archive-path", required=True, type=Path, help="the downloaded file")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_data_extract)
    p = data_commands.add_parser("prepare", help="write a dataset's aselmdb splits")
    p.add_argument("dataset", help="name in config/datasets.yaml")
    p.add_argument("inputs", nargs="*", type=Path, help="downloaded archives (paper scale)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--threads", type=int, default=1)
    _add_config_options(p)
    p.set_defaults(func=cmd_data_prepare)

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
        help="after training, score the best checkpoint on these split files (aselmdb) into "
        "metrics.json in the same process, as `dens evaluate` would (one training process only)",
    )
    _add_continuation_option(
        p, f"the training state ({RunDirectory(PurePosixPath()).checkpoint('last')})"
    )
    p.set_defaults(func=cmd_train)

    p = commands.add_parser("evaluate", help="score a trained run on held-out splits")
    _add_job_options(p)
    p.add_argument("splits", nargs="+", type=Path, help="split files (aselmdb)")
    p.set_defaults(func=cmd_evaluate)

    p = commands.add_parser(
        "submission", help="write the S2EF test submission file for the evaluation server"
    )
    _add_job_options(p)
    p.add_argument("splits", nargs="+", type=Path, help="test split files (aselmdb)")
    p.set_defaults(func=cmd_submission)

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

    p = commands.add_parser(
        "relax", help="IS2RE: relax the initial structures of the relax splits with a run"
    )
    _add_job_options(p)
    p.add_argument("splits", nargs="+", type=Path, help="relax split files (aselmdb)")
    _add_continuation_option(p, "the finished systems")
    p.set_defaults(func=cmd_relax)

    p = commands.add_parser(
        "simulate", help="MD simulations of a trained MD17 run: stability and h(r) (Table 10)"
    )
    _add_job_options(p)
    p.add_argument(
        "--initial",
        action="append",
        required=True,
        type=Path,
        help="split the initial configurations are drawn from (aselmdb; the test split)",
    )
    p.add_argument(
        "reference",
        nargs="+",
        type=Path,
        help="reference data for bond lengths and h(r) (aselmdb; every split of the dataset)",
    )
    _add_continuation_option(p, "the simulation state")
    p.set_defaults(func=cmd_simulate)

    p = commands.add_parser("table", help="write one paper table (CSV, Markdown, LaTeX)")
    p.add_argument("table", help="table1a, table1b, table2 ... table10, or published")
    p.add_argument("--out-dir", required=True)
    _add_config_options(p)
    p.set_defaults(func=cmd_table)

    p = commands.add_parser("figure", help="draw one of the paper's figures 3-5")
    p.add_argument("figure", help="figure3, figure4 or figure5")
    p.add_argument("--out", required=True, help="the PNG file (the PDF goes beside it)")
    p.add_argument("structures", nargs="+", help="each dataset's training split (aselmdb)")
    _add_config_options(p)
    p.set_defaults(func=cmd_figure)

    p = commands.add_parser("curves", help="learning curves of one table's runs (PNG and PDF)")
    p.add_argument("table", help="a results table: table1a ... table6, table10")
    p.add_argument("--out", required=True, help="the .png file (the .pdf goes beside it)")
    _add_config_options(p)
    p.set_defaults(func=cmd_curves)

    p = commands.add_parser("report", help="the HTML report: every table, figure and curve")
    p.add_argument("--out", required=True, help="the .html file")
    p.add_argument(
        "--published",
        action="store_true",
        help="with the table of the published checkpoints (dens.pipeline.published)",
    )
    _add_config_options(p)
    p.set_defaults(func=cmd_report)
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


def main(argv: list[str] | None = None) -> int:
    """Run one command; an error a user can cause is printed as one line (exit status 2), a
    missing or damaged file of the pipeline's layout with its Snakemake target
    (dens.pipeline.remedies, named for the command's duration)."""
    args = build_parser().parse_args(argv)
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
