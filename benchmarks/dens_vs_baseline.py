"""DeNS versus baseline as a paired experiment: one baseline experiment and its DeNS twin.

Three variants per seed, trained on the same data for the same epochs:

    baseline   --baseline EXPERIMENT (e.g. md17-ethanol/equiformer-l2, oc20-2m/eqv2-e12)
    dens       --dens EXPERIMENT     (e.g. md17-ethanol/equiformer-l2-dens, oc20-2m/eqv2-dens-e12)
    dens-p0    the dens experiment with p_DeNS = 0: DeNS modules, never a DeNS structure

Pairing: with one seed the three start from the same initial values of every parameter they
share and see the batches in the same order (dens.train: the model is built after
torch.manual_seed(seed), the order is seeded by (seed, epoch), the DeNS draws come from their own
generator); `check_pairing` verifies the first, and that the optimiser settings agree, before
anything trains. So per seed `dens - baseline` isolates the DeNS objective plus its modules,
`dens-p0 - baseline` the modules alone and `dens - dens-p0` the objective alone.

    snakemake --profile profiles/local results/mini/data/md17-ethanol/provenance.json
    python benchmarks/dens_vs_baseline.py --baseline md17-ethanol/equiformer-l2 \\
        --dens md17-ethanol/equiformer-l2-dens --seeds 0 1 2 3 4 --epochs 40 --workers 2

Runs land in benchmarks/results/dens_vs_baseline/<scale>-<epochs>-epochs/<dens experiment>/
<variant>/seed<S>/ (a run that finished is reused, a killed one resumes from its last.pt). Each
run is scored on the experiment's evaluation splits (the mean over them, as metrics.json's
top-level MAEs; per split in summary.json). Written beside them: summary.json (per variant and
seed: the validation force MAE per epoch from log.csv, the MAEs of the best checkpoint from
metrics.json; per pair: the paired differences) and curves.png/.pdf (validation force MAE
against epoch, mean and range over seeds, and the paired differences). The script reports what
it measures, whatever the sign; nothing is tuned here.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from dens.config_files import find_root
from dens.data.aselmdb import AseLmdbDataset
from dens.evaluate import evaluate
from dens.models import build_model
from dens.pipeline import paths
from dens.pipeline.registry import Registry, load_registry
from dens.train import train

VARIANTS = ("baseline", "dens", "dens-p0")
PAIRS = (("dens", "baseline"), ("dens-p0", "baseline"), ("dens", "dens-p0"))


def experiment_names(baseline: str, dens: str) -> dict[str, str]:
    """The registry experiment each variant trains."""
    return {"baseline": baseline, "dens": dens, "dens-p0": dens}


def resolve(
    registry: Registry, names: dict[str, str], variant: str, seed: int, epochs: int
) -> dict[str, Any]:
    """The experiment of one run: the registry's, with `epochs` and (dens-p0) p_DeNS = 0."""
    resolved = registry.resolve(names[variant], seed)
    if (resolved["dens"] is None) != (variant == "baseline"):
        raise SystemExit(
            f"{names[variant]}: the {variant} variant needs an experiment "
            f"{'without' if variant == 'baseline' else 'with'} DeNS"
        )
    resolved["optim"]["epochs"] = epochs
    if variant == "dens-p0":
        resolved["dens"]["p"] = 0.0
        resolved["name"] += "-p0"
    return resolved


def check_pairing(scale: str, names: dict[str, str], seed: int, epochs: int) -> int:
    """Build each variant as dens.train does (torch.manual_seed(seed), then the model) and check
    that every parameter they share (same name and shape) starts equal and that the optimiser
    settings agree; return how many parameter entries the baseline shares with every variant."""
    registry = load_registry({"scale": scale})
    built = {}
    for variant in VARIANTS:
        experiment = resolve(registry, names, variant, seed, epochs)
        torch.manual_seed(seed)
        built[variant] = (experiment, dict(build_model(experiment).named_parameters()))
    base_experiment, base = built["baseline"]
    shared = math.inf
    for variant, (experiment, params) in built.items():
        if experiment["optim"] != base_experiment["optim"]:
            raise SystemExit(f"{variant}: optim differs from the baseline's; not a paired run")
        if experiment["dataset"] != base_experiment["dataset"]:
            raise SystemExit(f"{variant}: dataset differs from the baseline's; not a paired run")
        keys = [k for k in base if k in params and params[k].shape == base[k].shape]
        unequal = [k for k in keys if not torch.equal(params[k], base[k])]
        if unequal:
            raise SystemExit(
                f"seed {seed}: {variant} does not start from the baseline's initial "
                f"values of the parameters they share: {unequal[:5]}"
            )
        shared = min(shared, sum(base[k].numel() for k in keys))
    return int(shared)


def run_once(
    scale: str, names: dict[str, str], variant: str, seed: int, epochs: int, out: Path
) -> Path:
    """Train and evaluate one run (1 thread) unless its metrics.json exists; its directory."""
    torch.set_num_threads(1)
    registry = load_registry({"scale": scale})
    experiment = resolve(registry, names, variant, seed, epochs)
    name = names[variant]
    (train_file,) = paths.experiment_split_files(registry, name, "train")
    val_file = paths.experiment_split_files(registry, name, "val")[0]
    test_files = paths.experiment_split_files(registry, name, "evaluate")
    run_dir = out / variant / f"seed{seed}"
    if not (run_dir / "metrics.json").is_file():
        train(
            experiment,
            AseLmdbDataset(registry.root / train_file),
            AseLmdbDataset(registry.root / val_file),
            run_dir,
            progress=False,
        )
        evaluate(run_dir, {f.stem: AseLmdbDataset(registry.root / f) for f in test_files})
        print(f"done: {variant} seed {seed}", flush=True)
    return run_dir


def read_run(run_dir: Path) -> dict[str, Any]:
    with (run_dir / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "val_forces_mae_meV_per_A": [float(r["val_forces_mae_meV_per_A"]) for r in rows],
        "val_energy_mae_meV": [float(r["val_energy_mae_meV"]) for r in rows],
        "test_forces_mae_meV_per_A": metrics["forces_mae_meV_per_A"],
        "test_energy_mae_meV": metrics["energy_mae_meV"],
        "test_forces_mae_meV_per_A_per_split": {
            split: values["forces_mae_meV_per_A"] for split, values in metrics["splits"].items()
        },
        "zero_forces_mae_meV_per_A": metrics["zero_forces_mae_meV_per_A"],
        "best_epoch": metrics["best_epoch"],
        "train_time_s": metrics.get("train_time_s"),
    }


def stdev(values: Sequence[float]) -> float:
    """Sample standard deviation; 0 for a single value (one seed)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Paired differences a - b over seeds: mean, sample std, t = mean / (std / sqrt(n)) (None
    when every difference is equal), how many seeds have a < b."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    std = stdev(d)
    mean = statistics.mean(d)
    t = mean / (std / math.sqrt(len(d))) if std > 0 else None
    return {"differences": d, "mean": mean, "std": std, "t": t, "a_lower": sum(x < 0 for x in d)}


def crossings(mean_difference: Sequence[float]) -> list[int]:
    """1-based epochs at which the mean paired difference changes sign from the epoch before."""
    return [
        epoch + 1
        for epoch in range(1, len(mean_difference))
        if (mean_difference[epoch] < 0) != (mean_difference[epoch - 1] < 0)
    ]


def summarise(runs: dict[str, dict[int, dict[str, Any]]], seeds: Sequence[int]) -> dict[str, Any]:
    pairs = {}
    for a, b in PAIRS:
        curves = [
            paired(
                [runs[a][s]["val_forces_mae_meV_per_A"][e] for s in seeds],
                [runs[b][s]["val_forces_mae_meV_per_A"][e] for s in seeds],
            )
            for e in range(len(runs[a][seeds[0]]["val_forces_mae_meV_per_A"]))
        ]
        mean_curve = [c["mean"] for c in curves]
        pairs[f"{a} - {b}"] = {
            "test_forces": paired(
                [runs[a][s]["test_forces_mae_meV_per_A"] for s in seeds],
                [runs[b][s]["test_forces_mae_meV_per_A"] for s in seeds],
            ),
            "test_energy": paired(
                [runs[a][s]["test_energy_mae_meV"] for s in seeds],
                [runs[b][s]["test_energy_mae_meV"] for s in seeds],
            ),
            "val_forces_per_epoch_mean": mean_curve,
            "val_forces_per_epoch_std": [c["std"] for c in curves],
            "val_forces_sign_changes_at_epochs": crossings(mean_curve),
        }
    return pairs


def plot(runs: dict[str, dict[int, dict[str, Any]]], seeds: Sequence[int], title: str, out: Path):
    """Left: validation force MAE per epoch, mean (line) and range (band) over seeds. Right: the
    paired differences to the baseline, per seed (thin) and their mean. The baseline is drawn
    dashed on top, so a variant that coincides with it stays visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_curve, ax_diff) = plt.subplots(1, 2, figsize=(12, 4.6))
    style = {
        "dens-p0": {"color": "tab:orange", "linewidth": 3.0},
        "dens": {"color": "tab:blue"},
        "baseline": {"color": "black", "linestyle": "--"},
    }
    for variant, line in style.items():
        curves = torch.tensor([runs[variant][s]["val_forces_mae_meV_per_A"] for s in seeds])
        epochs = range(1, curves.shape[1] + 1)
        ax_curve.plot(epochs, curves.mean(0), label=variant, **line)
        ax_curve.fill_between(
            epochs, curves.min(0).values, curves.max(0).values, color=line["color"], alpha=0.15
        )
    ax_curve.set(
        xlabel="epoch",
        ylabel="validation force MAE (meV/Å)",
        yscale="log",
        title=f"mean and range over {len(seeds)} seeds",
    )
    ax_curve.legend()
    for a, b in PAIRS[:2]:
        d = torch.tensor(
            [
                [
                    x - y
                    for x, y in zip(
                        runs[a][s]["val_forces_mae_meV_per_A"],
                        runs[b][s]["val_forces_mae_meV_per_A"],
                        strict=True,
                    )
                ]
                for s in seeds
            ]
        )
        epochs = range(1, d.shape[1] + 1)
        for row in d:
            ax_diff.plot(epochs, row, color=style[a]["color"], alpha=0.3, linewidth=0.8)
        ax_diff.plot(epochs, d.mean(0), label=f"{a} − {b} (mean; thin: seeds)", **style[a])
    ax_diff.axhline(0.0, color="black", linewidth=0.8)
    ax_diff.set(
        xlabel="epoch",
        ylabel="paired difference (meV/Å)",
        title="paired by seed (< 0: lower MAE than the baseline)",
    )
    ax_diff.legend()
    fig.suptitle(f"{title}: validation force MAE")
    fig.tight_layout()
    for suffix in (".png", ".pdf"):
        fig.savefig(out.with_suffix(suffix), dpi=150)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", default="mini")
    parser.add_argument("--baseline", default="md17-ethanol/equiformer-l2")
    parser.add_argument("--dens", default="md17-ethanol/equiformer-l2-dens")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument(
        "--workers", type=int, default=2, help="runs in parallel, 1 thread each (1: in process)"
    )
    args = parser.parse_args()
    names = experiment_names(args.baseline, args.dens)
    out = (
        find_root()
        / "benchmarks"
        / "results"
        / "dens_vs_baseline"
        / f"{args.scale}-{args.epochs}-epochs"
        / args.dens.replace("/", "--")
    )
    shared = check_pairing(args.scale, names, args.seeds[0], args.epochs)
    jobs = [(v, s) for s in args.seeds for v in VARIANTS]
    if args.workers == 1:  # in this process: no worker to spawn
        for job in jobs:
            run_once(args.scale, names, *job, args.epochs, out)
    else:
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            futures = [
                pool.submit(run_once, args.scale, names, *job, args.epochs, out) for job in jobs
            ]
            for future in futures:
                future.result()
    runs = {v: {s: read_run(out / v / f"seed{s}") for s in args.seeds} for v in VARIANTS}
    pairs = summarise(runs, args.seeds)
    summary: dict[str, Any] = {
        "scale": args.scale,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "experiments": names,
        "shared_initial_parameters": shared,
        "runs": runs,
        "pairs": pairs,
    }
    plot(
        runs,
        args.seeds,
        f"{args.scale}: {args.dens} vs {args.baseline}, {args.epochs} epochs",
        out / "curves",
    )
    print(
        f"\n{args.dens} vs {args.baseline}, {args.epochs} epochs, seeds {args.seeds} "
        f"({shared:,} shared initial parameter entries, equal)"
    )
    print("| variant | test force MAE (meV/Å), per seed | mean ± std | test energy MAE (meV) |")
    print("|---|---|---|---|")
    for v in VARIANTS:
        f = [runs[v][s]["test_forces_mae_meV_per_A"] for s in args.seeds]
        e = [runs[v][s]["test_energy_mae_meV"] for s in args.seeds]
        print(
            f"| {v} | {' '.join(f'{x:.1f}' for x in f)} | "
            f"{statistics.mean(f):.1f} ± {stdev(f):.1f} | "
            f"{statistics.mean(e):.1f} ± {stdev(e):.1f} |"
        )
    print(
        "\n| pair | test force diff, mean ± std (t; seeds where first is lower) | "
        "last-epoch val force diff | val sign changes at epochs |"
    )
    print("|---|---|---|---|")
    for name, p in pairs.items():
        t = p["test_forces"]
        print(
            f"| {name} | {t['mean']:+.1f} ± {t['std']:.1f} "
            f"(t={'-' if t['t'] is None else format(t['t'], '+.2f')}; "
            f"{t['a_lower']}/{len(args.seeds)}) | {p['val_forces_per_epoch_mean'][-1]:+.1f} "
            f"| {p['val_forces_sign_changes_at_epochs'] or 'none'} |"
        )
    (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    print(f"\nwritten: {out}/summary.json, curves.png/.pdf")


if __name__ == "__main__":
    main()
