"""The training engine shared by every model family, with or without DeNS.

One explicit loop, read top to bottom in `train`:

    for each epoch:                       (order: a permutation seeded by (seed, epoch))
        for each batch:
            lr <- linear warm-up then cosine decay, per step (`learning_rate`)
            lambda_DeNS <- dens.dens_coefficient (constant, or linear decay to 0 for MD17)
            loss <- Eq. 1, or with DeNS the mixed Eq. 1 / Eq. 6 batch (`loss_terms`)
            stop with NonFiniteLossError if the loss is NaN/inf (last good checkpoint kept)
            backward, clip the gradient norm, AdamW step, EMA update
            on SIGTERM: save last.pt (mid-epoch) and exit with PREEMPTED_EXIT_CODE
        validate (EMA weights if EMA is on); log.csv row; best.pt by val force MAE; last.pt

Labels are normalised with training statistics (`dens.checkpoint.Normalizer`): E' = (E - mean)
/ std per structure (optionally after per-element references), f' = f / std with the same std.
With DeNS the force input of the corrupted atoms is the normalised label f' (Alg. 2 line 19)
and the noise head predicts eps / sigma; without DeNS the model gets no force input and no
noise is predicted.

AdamW: no weight decay on 1-d parameters (biases, norm scales), on `*.bias`, and on names the
model lists in an optional `no_weight_decay()` (as timm does for the official Equiformer code).
EMA: after every step, ema <- decay * ema + (1 - decay) * weights (floating-point entries of
the state dict; other buffers are copied).

Resume: if run_dir/checkpoints/last.pt exists, training continues from it (weights, EMA,
optimiser, step, position inside the epoch, RNG states, running epoch sums, best, log); on CPU
the result is bit-identical to an uninterrupted run. The experiment must be the same.
Checkpoint layout: see dens.checkpoint.

Determinism: the model is built after torch.manual_seed(seed); the data order, the DeNS
corruption (a torch.Generator seeded with `seed`, saved in checkpoints) and the data-loader
worker seeds depend only on the seed; on CPU torch.use_deterministic_algorithms(True) is
switched on for the duration of the run.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torch_geometric.data import Batch, Data
from tqdm import tqdm

from dens.checkpoint import (
    FORMAT_VERSION,
    NUM_ELEMENTS,
    EnergyReference,
    Normalizer,
    load_checkpoint,
    save_checkpoint,
)
from dens.dens import (
    DeNSSettings,
    LossSettings,
    corrupt,
    dens_coefficient,
    dens_loss,
    original_task_loss,
)
from dens.evaluate import mean_absolute_errors

BuildModel = Callable[[dict], nn.Module]

NORMALIZER_SAMPLES = 100_000
PREEMPTED_EXIT_CODE = os.EX_TEMPFAIL  # 75: "try again later"; the rerun resumes from last.pt

LOG_COLUMNS = (
    "epoch",
    "step",
    "lr",
    "lambda_dens",
    "train_loss",
    "train_energy_loss",
    "train_forces_loss",
    "train_dens_loss",
    "val_energy_mae_meV",
    "val_forces_mae_meV_per_A",
    "train_samples_per_s",
    "epoch_time_s",
)
_LOSS_TERMS = ("total", "energy", "forces", "dens")
_DENS_FIELDS = (
    "p",
    "sigma",
    "corruption_ratio",
    "coefficient",
    "force_encoding",
    "energy_loss",
    "partial_corruption",
    "coefficient_decay",
)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; last.pt still holds the last good state."""


class TrainingPreempted(SystemExit):
    """SIGTERM arrived: last.pt was saved and the process should exit with
    PREEMPTED_EXIT_CODE (uncaught, this SystemExit does exactly that)."""

    def __init__(self, checkpoint: Path) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.checkpoint = checkpoint


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    epochs: int
    steps: int
    best_epoch: int
    best_val_forces_mae_meV_per_A: float
    train_time_s: float


# ---------------------------------------------------------------------------------------------
# Pieces of the loop


def learning_rate(step: int, optim: Mapping[str, Any], steps_per_epoch: int) -> float:
    """LR of optimiser step `step` (0-based), per step: f(step + 1) with t = steps completed,

        f(t) = lr * t / W                                            for t <= W (warm-up)
        f(t) = min_lr + (lr - min_lr) / 2 * (1 + cos(pi (t - W) / (T - W)))  for t > W,

    W = round(warmup_epochs * steps_per_epoch), T = epochs * steps_per_epoch: the warm-up
    reaches lr at its last step, then the cosine decays to exactly min_lr at the last step."""
    lr, min_lr = float(optim["lr"]), float(optim["min_lr"])
    warmup = round(float(optim["warmup_epochs"]) * steps_per_epoch)
    total = int(optim["epochs"]) * steps_per_epoch
    done = step + 1
    if done <= warmup:
        return lr * done / warmup
    progress = (done - warmup) / max(total - warmup, 1)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, optim: Mapping[str, Any]) -> torch.optim.AdamW:
    """AdamW with weight decay only on parameters of >= 2 dims that are not biases and that the
    model does not list in `no_weight_decay()`."""
    if optim["optimizer"] != "adamw":
        raise ValueError(f"optim.optimizer must be 'adamw', got {optim['optimizer']!r}")
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        plain = param.ndim <= 1 or name.endswith(".bias") or name in skip
        (no_decay if plain else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": float(optim["weight_decay"])},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=float(optim["lr"]))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, entry by entry of the state dicts."""
    for averaged, current in zip(
        ema.state_dict().values(), model.state_dict().values(), strict=True
    ):
        if averaged.dtype.is_floating_point:
            averaged.lerp_(current, 1.0 - decay)
        else:
            averaged.copy_(current)


def dens_settings(experiment: Mapping[str, Any]) -> DeNSSettings | None:
    dens = experiment.get("dens")
    if dens is None:
        return None
    missing = [field for field in _DENS_FIELDS if field not in dens]
    if missing:
        raise ValueError(f"experiment {experiment['name']!r}: dens lacks {missing}")
    return DeNSSettings(**{field: dens[field] for field in _DENS_FIELDS})


def loss_settings(optim: Mapping[str, Any]) -> LossSettings:
    """LossSettings from optim: energy/force coefficients, force_loss; optional noise_loss and
    loss_reduction (dens.dens defaults otherwise). The energy loss is always |E' - E_hat|."""
    if optim.get("energy_loss", "mae") != "mae":
        raise ValueError(f"optim.energy_loss must be 'mae', got {optim['energy_loss']!r}")
    optional = {"noise_metric": optim.get("noise_loss"), "reduction": optim.get("loss_reduction")}
    return LossSettings(
        energy_coefficient=optim["energy_coefficient"],
        force_coefficient=optim["force_coefficient"],
        force_metric=optim["force_loss"],
        **{key: value for key, value in optional.items() if value is not None},
    )


def loss_terms(
    model: nn.Module,
    batch: Batch,
    normalizer: Normalizer,
    losses: LossSettings,
    dens: DeNSSettings | None,
    generator: torch.Generator,
    coefficient: float,
) -> dict[str, Tensor]:
    """The training loss of one batch: {"total", "energy", "forces", "dens"} 0-dim tensors.

    Without DeNS: Eq. 1 on the batch, no force input, no noise. With DeNS: sample the
    corruption (dens.dens.corrupt), run the model on the corrupted positions with the encoded
    normalised forces of the corrupted atoms, and apply Eq. 1 / Eq. 6 per structure.
    """
    energy_target = normalizer.normalize_energy(batch.energy, batch.atomic_numbers, batch.batch)
    force_target = normalizer.normalize_forces(batch.forces)
    if dens is None:
        prediction = model(batch)
        return original_task_loss(prediction, batch, energy_target, force_target, losses)
    corruption = corrupt(batch, dens, generator, forces=force_target)
    inputs = batch.clone()
    inputs.pos = corruption.pos
    prediction = model(inputs, corruption.force_input, predict_noise=True)
    return dens_loss(
        prediction, batch, corruption, energy_target, force_target, losses, dens, coefficient
    )


def epoch_batches(num_samples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of epoch `epoch` (0-based): a permutation seeded by (seed, epoch), cut into
    full batches (the last partial batch is dropped, as in the official MD17 code)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_samples, generator=generator).tolist()
    return [order[k : k + batch_size] for k in range(0, num_samples - batch_size + 1, batch_size)]


def fit_normalizer(train_set: Sequence[Data], reference: EnergyReference, seed: int) -> Normalizer:
    """Energy statistics (Normalizer.fit) of the training set, in one pass over it; above
    NORMALIZER_SAMPLES structures, of a random subset of that size seeded by `seed` (a pass
    over the millions of OC20/OC22 frames would take about an hour at aselmdb read speed)."""
    indices: Sequence[int] = range(len(train_set))
    if len(train_set) > NORMALIZER_SAMPLES:
        generator = torch.Generator().manual_seed(seed)
        indices = torch.randperm(len(train_set), generator=generator)[:NORMALIZER_SAMPLES].tolist()
    energies, counts = [], []
    for index in indices:
        data = train_set[index]
        energies.append(float(data.energy))
        counts.append(torch.bincount(data.atomic_numbers, minlength=NUM_ELEMENTS))
    return Normalizer.fit(
        torch.tensor(energies, dtype=torch.float64), torch.stack(counts), reference
    )


def write_log(path: Path, history: Sequence[Mapping[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


@contextlib.contextmanager
def _sigterm_flag() -> Iterator[threading.Event]:
    """An event set by SIGTERM while the block runs (the handler is restored afterwards)."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled:
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=warn_only)


def _rng_state(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    cuda = [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []
    return {"dens": generator.get_state(), "torch": torch.get_rng_state(), "cuda": cuda}


def _set_rng_state(
    state: Mapping[str, Any], generator: torch.Generator, device: torch.device
) -> None:
    generator.set_state(state["dens"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"]:
        torch.cuda.set_rng_state(state["cuda"][0], device)


def _differences(a: Any, b: Any, where: str = "experiment") -> list[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(key), b.get(key), f"{where}.{key}")
        return out
    return [] if a == b else [f"{where}: {a!r} in last.pt, {b!r} now"]


# ---------------------------------------------------------------------------------------------
# The loop


def train(
    experiment: Mapping[str, Any],
    train_set: Sequence[Data],
    val_set: Sequence[Data],
    run_dir: Path,
    build_model: BuildModel,
    *,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    progress: bool = True,
) -> TrainResult:
    """Train `experiment` (a resolved experiment dict) into run_dir; resume if last.pt exists.

    build_model: the model registry, called with the full experiment dict (it reads model and
        dens: the noise head exists only with DeNS, force encoding only if dens.force_encoding).
    train_set, val_set: indexable datasets of `Data` with the shared fields.
    Writes run_dir/log.csv and run_dir/checkpoints/{last,best}.pt. Raises NonFiniteLossError on
    a NaN/inf loss and TrainingPreempted (a SystemExit with PREEMPTED_EXIT_CODE) on SIGTERM.
    """
    experiment = dict(experiment)
    run_dir = Path(run_dir)
    last_path = run_dir / "checkpoints" / "last.pt"
    best_path = run_dir / "checkpoints" / "best.pt"
    optim = experiment["optim"]
    seed = int(experiment["seed"])
    epochs, batch_size = int(optim["epochs"]), int(optim["batch_size"])
    eval_batch_size = int(optim["eval_batch_size"])
    ema_decay = optim.get("ema_decay")
    clip = optim.get("grad_clip_norm")
    if optim.get("lr_schedule", "cosine") != "cosine":
        raise ValueError(f"optim.lr_schedule must be 'cosine', got {optim['lr_schedule']!r}")
    steps_per_epoch = len(train_set) // batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"training set of {len(train_set)} structures is smaller than batch_size {batch_size}"
        )
    total_steps = epochs * steps_per_epoch
    device = torch.device(device)
    dens = dens_settings(experiment)
    losses = loss_settings(optim)

    with _deterministic(device.type == "cpu"), _sigterm_flag() as sigterm:
        torch.manual_seed(seed)
        model = build_model(experiment).to(device)
        ema = None
        if ema_decay is not None:
            ema = build_model(experiment).to(device).requires_grad_(False)
            ema.load_state_dict(model.state_dict())
        optimizer = build_optimizer(model, optim)
        generator = torch.Generator(device).manual_seed(seed)
        num_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)

        if last_path.is_file():
            state = load_checkpoint(last_path)
            changed = _differences(state["experiment"], experiment)
            changed += _differences(state["train_size"], len(train_set), "training set size")
            if changed:
                raise ValueError(
                    f"{last_path} was trained with another experiment ({'; '.join(changed)}); "
                    "delete the run directory to start over"
                )
            model.load_state_dict(state["model"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            _set_rng_state(state["rng"], generator, device)
            normalizer = Normalizer.from_dict(state["normalizer"])
            epoch, batch_in_epoch, step = state["epoch"], state["batch_in_epoch"], state["step"]
            sums, best = state["epoch_sums"], state["best"]
            history, timing = state["history"], state["timing"]
        else:
            normalizer = fit_normalizer(train_set, optim.get("energy_reference", "mean"), seed)
            epoch, batch_in_epoch, step = 0, 0, 0
            sums = {}
            best = {"epoch": 0, "val_forces_mae_meV_per_A": math.inf}
            history, timing = [], {"train_time_s": 0.0, "step_time_s": 0.0, "samples_seen": 0}
        run_dir.mkdir(parents=True, exist_ok=True)
        write_log(run_dir / "log.csv", history)

        def last_state() -> dict[str, Any]:
            return {
                "format_version": FORMAT_VERSION,
                "kind": "last",
                "experiment": experiment,
                "epoch": epoch,
                "batch_in_epoch": batch_in_epoch,
                "step": step,
                "train_size": len(train_set),
                "model": model.state_dict(),
                "ema": None if ema is None else ema.state_dict(),
                "optimizer": optimizer.state_dict(),
                "normalizer": normalizer.to_dict(),
                "rng": _rng_state(generator, device),
                "epoch_sums": sums,
                "best": best,
                "history": history,
                "timing": timing,
                "num_parameters": num_parameters,
            }

        eval_model = model if ema is None else ema
        while epoch < epochs:
            if batch_in_epoch == 0:
                sums = {"time_s": 0.0, "step_time_s": 0.0, "samples": 0}
                sums |= {term: 0.0 for term in _LOSS_TERMS}
            epoch_start = time.perf_counter() - sums["time_s"]
            batches = epoch_batches(len(train_set), batch_size, seed, epoch)
            loader = DataLoader(
                train_set,
                batch_sampler=batches[batch_in_epoch:],
                collate_fn=Batch.from_data_list,
                num_workers=num_workers,
                generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch),
            )
            model.train()
            bar = tqdm(
                loader,
                total=steps_per_epoch,
                initial=batch_in_epoch,
                desc=f"{experiment['name']} epoch {epoch + 1}/{epochs}",
                disable=not progress,
                leave=False,
            )
            for batch in bar:
                step_start = time.perf_counter()
                batch = batch.to(device)
                lr = learning_rate(step, optim, steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                coefficient = 0.0 if dens is None else dens_coefficient(dens, step, total_steps)
                terms = loss_terms(model, batch, normalizer, losses, dens, generator, coefficient)
                stacked = torch.stack([terms[term].detach() for term in _LOSS_TERMS])
                values = dict(zip(_LOSS_TERMS, stacked.tolist(), strict=True))  # one sync
                if not all(math.isfinite(v) for v in values.values()):
                    raise NonFiniteLossError(
                        f"experiment {experiment['name']!r}: non-finite loss {values} at epoch "
                        f"{epoch + 1} (1-based), batch {batch_in_epoch} of the epoch, global "
                        f"step {step}; {last_path} keeps the last good state"
                    )
                optimizer.zero_grad(set_to_none=True)
                terms["total"].backward()
                if clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), float(clip))
                optimizer.step()
                if ema is not None:
                    update_ema(ema, model, float(ema_decay))
                step += 1
                batch_in_epoch += 1
                for term in _LOSS_TERMS:
                    sums[term] += values[term]
                sums["samples"] += int(batch.natoms.numel())
                sums["step_time_s"] += time.perf_counter() - step_start
                bar.set_postfix(loss=f"{values['total']:.4g}", lr=f"{lr:.2e}")
                if sigterm.is_set() and batch_in_epoch < steps_per_epoch:
                    sums["time_s"] = time.perf_counter() - epoch_start
                    save_checkpoint(last_state(), last_path)
                    raise TrainingPreempted(last_path)
            bar.close()

            val = mean_absolute_errors(eval_model, val_set, normalizer, eval_batch_size, device)
            epoch += 1
            batch_in_epoch = 0
            epoch_time = time.perf_counter() - epoch_start
            timing["train_time_s"] += epoch_time
            timing["step_time_s"] += sums["step_time_s"]
            timing["samples_seen"] += sums["samples"]
            history.append(
                {
                    "epoch": epoch,
                    "step": step,
                    "lr": learning_rate(step - 1, optim, steps_per_epoch),
                    "lambda_dens": 0.0
                    if dens is None
                    else dens_coefficient(dens, step - 1, total_steps),
                    "train_loss": sums["total"] / steps_per_epoch,
                    "train_energy_loss": sums["energy"] / steps_per_epoch,
                    "train_forces_loss": sums["forces"] / steps_per_epoch,
                    "train_dens_loss": sums["dens"] / steps_per_epoch,
                    "val_energy_mae_meV": val["energy_mae_meV"],
                    "val_forces_mae_meV_per_A": val["forces_mae_meV_per_A"],
                    "train_samples_per_s": sums["samples"] / max(sums["step_time_s"], 1e-12),
                    "epoch_time_s": epoch_time,
                }
            )
            write_log(run_dir / "log.csv", history)
            if progress:
                tqdm.write(
                    f"{experiment['name']} epoch {epoch}/{epochs}: "
                    f"loss {history[-1]['train_loss']:.4g}, "
                    f"val energy MAE {val['energy_mae_meV']:.4g} meV, "
                    f"val force MAE {val['forces_mae_meV_per_A']:.4g} meV/Å ({epoch_time:.1f} s)"
                )
            if val["forces_mae_meV_per_A"] < best["val_forces_mae_meV_per_A"]:
                best = {"epoch": epoch, "val_forces_mae_meV_per_A": val["forces_mae_meV_per_A"]}
                best_state = {
                    "format_version": FORMAT_VERSION,
                    "kind": "best",
                    "experiment": experiment,
                    "epoch": epoch,
                    "step": step,
                    "model": eval_model.state_dict(),
                    "weights": "model" if ema is None else "ema",
                    "normalizer": normalizer.to_dict(),
                    "val": {
                        "energy_mae_meV": val["energy_mae_meV"],
                        "forces_mae_meV_per_A": val["forces_mae_meV_per_A"],
                    },
                    "num_parameters": num_parameters,
                }
                save_checkpoint(best_state, best_path)
            sums = {}
            save_checkpoint(last_state(), last_path)
            if sigterm.is_set():
                raise TrainingPreempted(last_path)

    return TrainResult(
        run_dir=run_dir,
        epochs=epoch,
        steps=step,
        best_epoch=best["epoch"],
        best_val_forces_mae_meV_per_A=best["val_forces_mae_meV_per_A"],
        train_time_s=timing["train_time_s"],
    )
