"""What each ``dens`` command does (``cmd_<command>``, run by dens.pipeline.cli with the arguments
dens.pipeline.parsers read): it loads the registry, calls the library and prints a summary."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dens.errors import ConfigError, InvalidDataError
from dens.layout import RunDirectory
from dens.pipeline.registry import Registry, load_registry


def registry_from(args: argparse.Namespace, scale: str | None = None) -> Registry:
    options: dict[str, Any] = {"scale": scale or args.scale}
    if getattr(args, "data_seed", None) is not None:
        options["data_seed"] = args.data_seed
    if getattr(args, "extra_experiments", None):
        options["extra_experiments"] = args.extra_experiments
    if getattr(args, "catalog", None) is not None:
        options["catalog"] = args.catalog
    if getattr(args, "seeds", None):
        options["seeds"] = args.seeds
    return load_registry(options)


def job_experiment(args: argparse.Namespace) -> tuple[Registry, dict[str, Any]]:
    """A run's job (``--run-dir``, ``--seed``): the registry of its options and its experiment
    resolved at the job's training seed."""
    registry = registry_from(args)
    return registry, registry.resolve(args.experiment, args.seed)


def _set_threads(threads: int) -> None:
    import torch

    if threads < 1:
        raise ConfigError(f"--threads {threads}: needs at least 1 thread")
    torch.set_num_threads(threads)


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
    from dens.data.download.catalog import get_archive, load_catalog_with
    from dens.data.download.transfer import download_archive

    archive = get_archive(load_catalog_with(args.catalog), args.archive)
    download_archive(archive, args.out, args.mirror)


def cmd_data_extract(args: argparse.Namespace) -> None:
    from dens.data.download.catalog import get_archive, load_catalog_with
    from dens.data.download.extract import extract

    archive = get_archive(load_catalog_with(args.catalog), args.archive)
    extract(args.archive_path, args.out, archive.format, archive.extracted_size)


def cmd_data_prepare(args: argparse.Namespace) -> None:
    from dens.data.prepare import prepare_dataset

    settings = registry_from(args).data_settings(args.dataset)
    _set_threads(args.threads)
    prepare_dataset(settings, Path(args.out_dir), args.inputs, args.threads)


def cmd_data_convert_group(args: argparse.Namespace) -> None:
    from dens.data.oc_convert import convert_group

    settings = registry_from(args).data_settings(args.dataset)
    _set_threads(1)
    convert_group(
        settings, args.archive_dir, args.group, args.groups, Path(args.out_dir), args.threads
    )


def cmd_train(args: argparse.Namespace) -> None:
    from dens.data.aselmdb import AseLmdbDataset
    from dens.distributed import World
    from dens.pipeline import slurm
    from dens.runs import keep_outputs
    from dens.train import train

    _, experiment = job_experiment(args)
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
    job_experiment(args)  # the experiment exists at the scale
    _set_threads(args.threads)
    _evaluate(args.experiment, Path(args.run_dir), _open_splits(args.splits), args.device)


def _open_splits(split_paths: list[Path], opened: dict[Path, Any] | None = None) -> dict[str, Any]:
    """{split name (path stem): dataset} of splits, folders of aselmdb shards or aselmdb files
    (a missing or damaged shard raises DataError); splits in ``opened`` ({path: dataset}) are
    not read again."""
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

    registry, experiment = job_experiment(args)
    state = import_checkpoint(
        args.checkpoint, args.run_dir, registry, experiment, args.energy_reference_file
    )
    written = RunDirectory(Path(args.run_dir)).checkpoint()
    parameters = f"{state['num_parameters']} parameters ({state['weights']} weights)"
    print(f"{args.checkpoint} -> {written}: {parameters}, labelled {args.experiment}")


def cmd_submission(args: argparse.Namespace) -> None:
    from dens.pipeline.challenges import challenge_for
    from dens.pipeline.submission import write_submission

    _, experiment = job_experiment(args)
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


@contextmanager
def _stage_job(args: argparse.Namespace, stage: str) -> Iterator[float | None]:
    """A resumable stage job (``relax``, ``simulate``) of ``args.run_dir``: its threads set, and
    the time to stop at (None: no limit) before the Slurm time limit, recorded in the stage's
    history (dens.pipeline.slurm.continuation)."""
    from dens.pipeline import slurm

    _set_threads(args.threads)
    history = RunDirectory(Path(args.run_dir)).stage_dir(stage) / slurm.HISTORY_FILE
    with slurm.continuation(args.continue_before_time_limit, history) as stop_at:
        yield stop_at


def cmd_relax(args: argparse.Namespace) -> None:
    from dens.pipeline.challenges import challenge_for
    from dens.pipeline.is2re import relax_run
    from dens.relaxation.lbfgs import LBFGSSettings

    registry, experiment = job_experiment(args)
    challenge = challenge_for(experiment["dataset_family"], "is2re")
    relax = registry.relax_settings(args.experiment)
    if relax is None:
        raise ConfigError(
            f"dens relax {args.experiment}: the experiment has no relax settings (its dataset "
            f"{experiment['dataset']} has no relax splits)"
        )
    lbfgs = {k: relax[k] for k in ("max_steps", "fmax", "maxstep", "memory", "damping", "alpha")}
    with _stage_job(args, "relax") as stop_at:
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
    converged = f"{100 * metrics['converged_fraction']:.0f}% converged"
    steps = f"mean {metrics['mean_steps']:.0f} steps"
    print(
        f"{args.experiment}: {challenge.name} relaxations ({counts}), {converged}, {steps}{scored}"
    )


def cmd_simulate(args: argparse.Namespace) -> None:
    from dens.simulate import SimulationSettings, simulate_run

    registry, experiment = job_experiment(args)
    if experiment["dataset_family"] != "md17":
        raise ConfigError(
            f"dens simulate {args.experiment}: simulations are of MD17 molecules (Table 10); "
            f"its dataset {experiment['dataset']} is of family {experiment['dataset_family']}"
        )
    settings = SimulationSettings.from_scale(registry.scale, registry.scale_name)
    with _stage_job(args, "simulate") as stop_at:
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
