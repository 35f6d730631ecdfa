"""Training steps on one CUDA GPU: float32 vs float16 mixed precision, with and without DeNS.

Each case is a real training step of the training engine (dens.training.trainee: forward_loss +
update, i.e. the loss of Eq. 1 / Eq. 6 with the DeNS corruption, backward, AdamW, EMA, and with
mixed precision float16 autocast + GradScaler) on batches of a prepared mini split, at the mini
presets and at the 2-block L6 M2 EquiformerV2 of benchmarks/bench_equiformer_v2_step.py. Per case:
the median and min step time over ``--steps`` steps after ``--warmup`` steps, structures per second,
the peak GPU memory, and whether every loss was finite and GradScaler skipped no step (with mixed
precision); then the evaluation forward pass (dens.inference.predict) on the same batches, and its
time over the training step's (``eval_over_train``: what evaluating a checkpoint costs per
structure relative to training on it). Where the DeNS variant of a case exists, the summary
gives the DeNS / plain step time ratio measured in the same run. Writes one JSON file::

    python benchmarks/gpu_train_step.py --data results/mini/data --out gpu_train_step.json

(--data holds the split folders md17-ethanol/train and oc20-2m/train, e.g. from
``snakemake --profile profiles/local results/mini/data/{md17-ethanol,oc20-2m}/provenance.json``.)
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from dens.data.aselmdb import AseLmdbDataset
from dens.data.batch import Batch
from dens.distributed import World
from dens.inference import predict
from dens.models import build_model, count_parameters
from dens.normalization import Normalizer
from dens.pipeline.registry import load_registry
from dens.training.labels import fit_normalizer
from dens.training.losses import loss_terms
from dens.training.schedule import epoch_batches
from dens.training.settings import TrainSettings
from dens.training.trainee import build_trainee, forward_loss, update

# (case, experiment at the mini scale, dataset, model overrides)
CASES = [
    ("equiformer-mini", "md17-ethanol/equiformer-l2", "md17-ethanol", {}),
    ("equiformer-mini+dens", "md17-ethanol/equiformer-l2-dens", "md17-ethanol", {}),
    ("eqv2-mini", "oc20-2m/eqv2-e12", "oc20-2m", {}),
    ("eqv2-mini+dens", "oc20-2m/eqv2-dens-e12", "oc20-2m", {}),
]
# EquiformerV2 at 2 blocks, L6, M2 and the paper's OC20 S2EF-2M sizes (the eqv2-83m preset with 2
# of its 12 blocks, as bench_equiformer_v2_step.py), trained with the mini optimisation settings
EQV2_2_BLOCKS = {"preset_of_scale": "paper", "num_layers": 2}
CASES += [
    ("eqv2-2-blocks-L6", "oc20-2m/eqv2-e12", "oc20-2m", EQV2_2_BLOCKS),
    ("eqv2-2-blocks-L6+dens", "oc20-2m/eqv2-dens-e12", "oc20-2m", EQV2_2_BLOCKS),
    # the paper's 83M model (12 blocks; 89M with DeNS), for which it reports DeNS at +7.4% time
    ("eqv2-83m", "oc20-2m/eqv2-e12", "oc20-2m", {"preset_of_scale": "paper"}),
    ("eqv2-83m+dens", "oc20-2m/eqv2-dens-e12", "oc20-2m", {"preset_of_scale": "paper"}),
]


def experiment_of(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The mini experiment ``name``; with "preset_of_scale" in ``overrides``, its model is that
    scale's (switches included), with the other overrides applied."""
    experiment = dict(load_registry({"scale": "mini"}).resolve(name), seed=0)
    overrides = dict(overrides)
    scale = overrides.pop("preset_of_scale", None)
    if scale is not None:
        experiment["model"] = load_registry({"scale": scale}).resolve(name)["model"]
    if overrides:
        model = dict(experiment["model"])
        model["hyperparameters"] = {**model["hyperparameters"], **overrides}
        experiment["model"] = model
    return experiment


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_case(
    experiment: dict[str, Any],
    dataset: AseLmdbDataset,
    amp: bool,
    steps: int,
    warmup: int,
    device: torch.device,
) -> dict[str, Any]:
    """Step times of the engine's training step on ``device`` (module notes)."""
    cuda = device.type == "cuda"
    settings = TrainSettings.from_experiment(experiment)
    optim = settings.optim
    new_model = functools.partial(build_model, experiment)
    trainee = build_trainee(settings, new_model, device, World(), amp)
    normalizer = fit_normalizer(dataset, settings.labels.reference, 0)
    batches = epoch_batches(len(dataset), optim.batch_size, 0, 0)
    if not batches:
        raise SystemExit(f"{len(dataset)} structures: fewer than a batch of {optim.batch_size}")
    batches = (batches * math.ceil((steps + warmup) / len(batches)))[: steps + warmup]

    def loss(network: torch.nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        return loss_terms(
            network,
            batch,
            normalizer,
            settings.loss,
            settings.denoising,
            trainee.generator,
            1.0,
            trainee.decision_generator,
        )

    trainee.model.train()
    times, finite, skipped, structures, atoms = [], True, 0, 0, 0
    for k, indices in enumerate(batches):
        batch = Batch.from_data_list([dataset[i] for i in indices]).to(device)
        if k == warmup and cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        synchronize(device)
        start = time.perf_counter()
        total, values, _ = forward_loss(trainee, batch, loss, World(), False)
        scale = trainee.scaler.get_scale() if amp else 1.0
        update(trainee, total, optim)
        synchronize(device)
        if k >= warmup:
            times.append(time.perf_counter() - start)
            structures += len(indices)
            atoms += batch.num_nodes
            finite &= all(math.isfinite(v) for v in values.values())
            skipped += int(amp and trainee.scaler.get_scale() < scale)
    median = statistics.median(times)
    evaluation = evaluation_times(trainee.model, dataset, batches, normalizer, warmup, device)
    return {
        "mixed_precision": amp,
        "parameters": count_parameters(trainee.model),
        "batch_size": optim.batch_size,
        "atoms_per_batch": atoms / len(times),
        "median_ms": 1e3 * median,
        "min_ms": 1e3 * min(times),
        "structures_per_s": structures / sum(times),
        "peak_memory_MiB": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "all_losses_finite": finite,
        "grad_scaler_skipped_steps": skipped,
        "last_loss": values["total"],
        "eval_median_ms": 1e3 * statistics.median(evaluation),
        "eval_over_train": statistics.median(evaluation) / median,
    }


def evaluation_times(
    model: torch.nn.Module,
    dataset: AseLmdbDataset,
    batches: list[list[int]],
    normalizer: Normalizer,
    warmup: int,
    device: torch.device,
) -> list[float]:
    """Seconds per batch of the evaluation forward pass (dens.inference.predict: eval mode, no
    noise head, no gradients for direct-force models) on the same batches as the training steps,
    float32, the warm-up batches untimed: what `dens evaluate` and relaxations cost per batch."""
    model.eval()
    times = []
    for k, indices in enumerate(batches):
        batch = Batch.from_data_list([dataset[i] for i in indices]).to(device)
        synchronize(device)
        start = time.perf_counter()
        predict(model, batch, normalizer)
        synchronize(device)
        if k >= warmup:
            times.append(time.perf_counter() - start)
    model.train()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("results/mini/data"))
    parser.add_argument("--out", type=Path, default=Path("gpu_train_step.json"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda", help="cuda, or cpu to try the script out")
    parser.add_argument(
        "--cases", nargs="*", help="only these cases (default: all but the 83M ones)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here (--device cpu tries the script out)")
    datasets: dict[str, AseLmdbDataset] = {}
    results: dict[str, dict[str, Any]] = {}
    for case, name, dataset, overrides in CASES:
        if (args.cases and case not in args.cases) or (not args.cases and "83m" in case):
            continue
        if dataset not in datasets:
            datasets[dataset] = AseLmdbDataset(args.data / dataset / "train")
        experiment = experiment_of(name, overrides)
        for amp in (False, True) if device.type == "cuda" else (False,):
            key = f"{case} {'fp16-amp' if amp else 'fp32'}"
            results[key] = time_case(
                experiment, datasets[dataset], amp, args.steps, args.warmup, device
            )
            print(key, json.dumps(results[key]), flush=True)
    ratios = {}
    for key, value in results.items():
        case, precision = key.split(" ")
        plain = results.get(f"{case.removesuffix('+dens')} {precision}")
        if case.endswith("+dens") and plain is not None:
            ratios[f"{case} {precision} / plain"] = value["median_ms"] / plain["median_ms"]
    for key, value in results.items():
        if key.endswith("fp16-amp"):
            fp32 = results[key.replace("fp16-amp", "fp32")]
            ratios[f"{key} / fp32"] = value["median_ms"] / fp32["median_ms"]
    summary = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.machine(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "steps": args.steps,
        "warmup": args.warmup,
        "cases": results,
        "ratios": ratios,
    }
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    for key, ratio in ratios.items():
        print(f"{key}: {ratio:.3f}")


if __name__ == "__main__":
    main()
