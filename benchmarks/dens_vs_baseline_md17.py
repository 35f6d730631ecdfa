"""The scientific check at a small scale: Equiformer (Lmax=2) with vs without DeNS on mini-MD17.

Same data, same epochs, same model size (the scale's preset); several seeds; test-split force and
energy MAE, mean and standard deviation per molecule. Reports what it measures, whatever the sign.

    snakemake --profile profiles/local results/mini/data/md17-aspirin/provenance.json \\
        results/mini/data/md17-ethanol/provenance.json        # the data, once
    python benchmarks/dens_vs_baseline_md17.py --molecules aspirin ethanol --seeds 0 1 2

Runs land in benchmarks/results/dens_vs_baseline/<scale>/<experiment>/seed<S>/ (resumed if
present); the summary is printed and written as summary.json beside them.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from dens import paths
from dens.config import find_root, load_registry
from dens.data.aselmdb import AseLmdbDataset
from dens.evaluate import evaluate
from dens.train import train

PAIR = ("equiformer-l2", "equiformer-l2-dens")


def run_once(
    scale: str, experiment: str, seed: int, out: Path, epochs: int | None
) -> dict[str, float]:
    registry = load_registry({"scale": scale})
    resolved = registry.resolve(experiment, seed)
    if epochs is not None:
        resolved["optim"]["epochs"] = epochs
    (train_file,) = paths.experiment_split_files(registry, experiment, "train")
    val_file = paths.experiment_split_files(registry, experiment, "val")[0]
    test_files = paths.experiment_split_files(registry, experiment, "evaluate")
    run_dir = out / experiment / f"seed{seed}"
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        train(
            resolved,
            AseLmdbDataset(registry.root / train_file),
            AseLmdbDataset(registry.root / val_file),
            run_dir,
        )
        splits = {f.stem: AseLmdbDataset(registry.root / f) for f in test_files}
        evaluate(run_dir, splits)
    return json.loads(metrics_path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", default="mini")
    parser.add_argument("--molecules", nargs="+", default=["aspirin", "ethanol"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, help="override the scale's epochs (both models)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    label = args.scale if args.epochs is None else f"{args.scale}-{args.epochs}-epochs"
    out = find_root() / "benchmarks" / "results" / "dens_vs_baseline" / label
    summary: dict[str, dict[str, dict[str, float]]] = {}
    print(f"{label}, seeds {args.seeds}: test MAE, mean ± std over seeds")
    print("| molecule | model | forces (meV/Å) | energy (meV) | zero-force baseline |")
    print("|---|---|---|---|---|")
    for molecule in args.molecules:
        for name in PAIR:
            experiment = f"md17-{molecule}/{name}"
            runs = [run_once(args.scale, experiment, seed, out, args.epochs) for seed in args.seeds]
            forces = [r["forces_mae_meV_per_A"] for r in runs]
            energy = [r["energy_mae_meV"] for r in runs]
            row = {
                "forces_mean": statistics.mean(forces),
                "forces_std": statistics.stdev(forces) if len(forces) > 1 else 0.0,
                "energy_mean": statistics.mean(energy),
                "energy_std": statistics.stdev(energy) if len(energy) > 1 else 0.0,
                "zero_forces": runs[0]["zero_forces_mae_meV_per_A"],
                "forces_per_seed": forces,
            }
            summary.setdefault(molecule, {})[name] = row
            print(
                f"| {molecule} | {name} | {row['forces_mean']:.1f} ± {row['forces_std']:.1f} | "
                f"{row['energy_mean']:.1f} ± {row['energy_std']:.1f} | {row['zero_forces']:.1f} |"
            )
        base, dens = (summary[molecule][name]["forces_mean"] for name in PAIR)
        print(f"|   | DeNS / baseline force MAE | {dens / base:.3f} | | |")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
