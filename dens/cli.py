"""``dens``: the command-line tool the pipeline's jobs call, usable by hand too.

    dens experiments [--scale S]            list every experiment
    dens params EXPERIMENT                  trainable parameters of the paper-scale model
    dens data download|extract|prepare ...  the data rules
    dens train|evaluate|relax|simulate EXPERIMENT --scale S --run-dir DIR
    dens table NAME --scale S --out-dir DIR
    dens figure NAME --scale S --out FILE

Every command resolves the configuration through :mod:`dens.config`, so a bad name or value is
reported with the file and key it came from.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dens.config import ConfigError, Registry, find_root, load_registry
from dens.models import ModelNotAvailableError


class CommandError(RuntimeError):
    """A command cannot do what it was asked; the message says why."""


def registry_from(args: argparse.Namespace, scale: str | None = None) -> Registry:
    options: dict[str, Any] = {"scale": scale or args.scale}
    if getattr(args, "seed", None) is not None:
        options["seed"] = args.seed
    if getattr(args, "extra_experiments", None):
        options["extra_experiments"] = args.extra_experiments
    return load_registry(options)


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


# -- commands ------------------------------------------------------------------------------------
def cmd_experiments(args: argparse.Namespace) -> None:
    registry = registry_from(args)
    for name, experiment in registry.experiments.items():
        dens = "DeNS" if experiment["dens"] else "no DeNS"
        model = experiment["model"]
        print(f"{name}\t{model['family']}/{model['preset']}\t{dens}\t{experiment['source']}")


def cmd_params(args: argparse.Namespace) -> None:
    from dens.models import build_model, count_parameters

    registry = registry_from(args, scale="paper")
    resolved = registry.resolve(args.experiment)
    model = resolved["model"]
    count = count_parameters(build_model(resolved))
    dens = " + DeNS" if resolved["dens"] else ""
    print(
        f"{count}\t{count / 1e6:.2f}M trainable parameters: {args.experiment} "
        f"({model['family']} preset {model['preset']}{dens}, paper scale)"
    )


def cmd_data_download(args: argparse.Namespace) -> None:
    from dens.data.download import download, load_catalog

    catalog = load_catalog(find_root() / "config" / "archives.yaml")
    if args.archive not in catalog:
        raise CommandError(f"unknown archive {args.archive!r} (config/archives.yaml)")
    archive = catalog[args.archive]
    download(archive.url, args.out, archive.digest, archive.algorithm or "sha256")


def cmd_data_extract(args: argparse.Namespace) -> None:
    from dens.data.download import extract, load_catalog

    archive = load_catalog(find_root() / "config" / "archives.yaml")[args.archive]
    extract(args.archive_path, args.out, archive.format)


def cmd_data_prepare(args: argparse.Namespace) -> None:
    registry = registry_from(args)
    settings = registry.data_settings(args.dataset)
    out_dir = Path(args.out_dir)
    if settings["family"] != "md17":
        raise CommandError(
            f"dataset {args.dataset}: preparing {settings['family'].upper()} data "
            f"({settings['source']}) is not implemented yet; it lands with the OC20/OC22 issue"
        )
    from dens.data import md17

    if settings["source"] == "generate":
        _set_threads(args.threads)
        md17.generate_md17(
            settings["molecule"],
            out_dir,
            n_train=settings["n_train"],
            n_val=settings["n_val"],
            n_test=settings["n_test"],
            seed=settings["seed"],
            stride=settings["stride"],
            equilibration_steps=settings["equilibration_steps"],
        )
        return
    npz = [Path(p) for p in args.inputs if str(p).endswith(".npz")]
    if len(npz) != 1:
        raise CommandError(
            f"dataset {args.dataset}: expected one MD17 .npz input, got {args.inputs}"
        )
    md17.convert_md17_npz(npz[0], out_dir)


SPLITS = {"md17": ("train", "val", "test")}  # OC20/OC22 splits land with their issue


def _splits(registry: Registry, experiment: dict[str, Any]) -> tuple[Path, Path, Path]:
    family = experiment["dataset_family"]
    if family not in SPLITS:
        raise CommandError(
            f"{experiment['name']}: training on {family.upper()} is not implemented yet; "
            "it lands with the OC20/OC22 issue"
        )
    data_dir = registry.root / "results" / registry.scale_name / "data" / experiment["dataset"]
    return tuple(data_dir / f"{split}.aselmdb" for split in SPLITS[family])  # type: ignore[return-value]


def cmd_train(args: argparse.Namespace) -> None:
    from dens.data.aselmdb import AseLmdbDataset
    from dens.models import build_model
    from dens.train import train

    registry = registry_from(args)
    experiment = registry.resolve(args.experiment)
    train_path, val_path, _ = _splits(registry, experiment)
    _set_threads(args.threads)
    result = train(
        experiment,
        AseLmdbDataset(train_path),
        AseLmdbDataset(val_path),
        Path(args.run_dir),
        build_model,
        device=args.device,
    )
    print(
        f"{args.experiment}: {result.epochs} epochs, best validation force MAE "
        f"{result.best_val_forces_mae_meV_per_A:.2f} meV/Å (epoch {result.best_epoch})"
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    from dens.data.aselmdb import AseLmdbDataset
    from dens.evaluate import evaluate
    from dens.models import build_model

    registry = registry_from(args)
    experiment = registry.resolve(args.experiment)
    _, _, test_path = _splits(registry, experiment)
    _set_threads(args.threads)
    metrics = evaluate(
        Path(args.run_dir), AseLmdbDataset(test_path), build_model, device=args.device
    )
    print(
        f"{args.experiment}: test energy MAE {metrics['energy_mae_meV']:.2f} meV, force MAE "
        f"{metrics['forces_mae_meV_per_A']:.2f} meV/Å (zero forces: "
        f"{metrics['zero_forces_mae_meV_per_A']:.2f})"
    )


def cmd_pending(args: argparse.Namespace) -> None:
    """Stages whose implementation lands with a later issue stop here, naming what is missing."""
    registry = registry_from(args)
    registry.resolve(args.experiment)
    raise CommandError(
        f"dens {args.command} {args.experiment}: {PENDING_STAGES[args.command]}; "
        "nothing was written"
    )


PENDING_STAGES = {
    "relax": "IS2RE relaxation (dens.relax) is not implemented yet (issue: OC20/OC22)",
    "simulate": "MD17 simulation (dens.simulate) is not implemented yet (issue: MD17 simulations)",
}


def cmd_table(args: argparse.Namespace) -> None:
    from dens.tables import write_table

    registry = registry_from(args)
    for path in write_table(registry, args.table, Path(args.out_dir)):
        print(path)


def cmd_figure(args: argparse.Namespace) -> None:
    from dens.figures import draw_figure

    registry = registry_from(args)
    draw_figure(registry, args.figure, Path(args.out))


# -- parser --------------------------------------------------------------------------------------
def _add_config_options(parser: argparse.ArgumentParser, scale_default: str | None = None) -> None:
    parser.add_argument(
        "--scale",
        default=scale_default,
        required=scale_default is None,
        help="paper, mini or smoke (config/scales/)",
    )
    parser.add_argument("--seed", type=int, help="seed of the run (default: config/config.yaml)")
    parser.add_argument(
        "--extra-experiments", action="append", default=[], help="extra experiment file(s)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dens", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("experiments", help="list every experiment")
    _add_config_options(p, scale_default="paper")
    p.set_defaults(func=cmd_experiments)

    p = commands.add_parser("params", help="trainable parameters of the paper-scale model")
    p.add_argument("experiment")
    p.set_defaults(func=cmd_params, scale="paper")

    data = commands.add_parser("data", help="download, extract and prepare datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    p = data_commands.add_parser("download", help="download and verify one archive")
    p.add_argument("archive", help="name in config/archives.yaml")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_data_download)
    p = data_commands.add_parser("extract", help="extract one verified archive")
    p.add_argument("archive", help="name in config/archives.yaml")
    p.add_argument("--archive-path", "--archive", dest="archive_path", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_data_extract)
    p = data_commands.add_parser("prepare", help="write a dataset's aselmdb splits")
    p.add_argument("dataset", help="name in config/datasets.yaml")
    p.add_argument("inputs", nargs="*", help="downloaded archives (paper scale)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--threads", type=int, default=1)
    _add_config_options(p)
    p.set_defaults(func=cmd_data_prepare)

    stages = {"train": cmd_train, "evaluate": cmd_evaluate}
    stages |= {stage: cmd_pending for stage in PENDING_STAGES}
    for stage, func in stages.items():
        p = commands.add_parser(stage, help=f"{stage} one experiment")
        p.add_argument("experiment")
        p.add_argument("--run-dir", required=True)
        p.add_argument("--threads", type=int, default=1, help="CPU threads of torch")
        p.add_argument("--device", default="cpu", help="cpu or cuda")
        _add_config_options(p)
        p.set_defaults(func=func)

    p = commands.add_parser("table", help="write one paper table (CSV + LaTeX)")
    p.add_argument("table", help="table1a, table1b, table2 ... table10")
    p.add_argument("--out-dir", required=True)
    _add_config_options(p)
    p.set_defaults(func=cmd_table)

    p = commands.add_parser("figure", help="draw one of the paper's figures 3-5")
    p.add_argument("figure", help="figure3, figure4 or figure5")
    p.add_argument("--out", required=True)
    _add_config_options(p)
    p.set_defaults(func=cmd_figure)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, CommandError, ModelNotAvailableError) as error:
        print(f"dens: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
