"""Checkpoints: what a run saves, written atomically and read without running code.

A checkpoint is a dict of tensors and plain Python containers, numbers, strings, bools and None,
written with `torch.save` and read back ONLY with `torch.load(weights_only=True)`: loading a
checkpoint never runs code. `save_checkpoint` refuses anything else (a numpy scalar, a dataclass)
and names where it sits, and writes atomically (temporary file, fsync, rename), so a job killed
while saving leaves the previous file intact.

Layout of run_dir/checkpoints/last.pt (written by dens.train after every epoch and on SIGTERM):

    format_version   int, FORMAT_VERSION
    kind             "last"
    experiment       the resolved experiment dict the run was started with
    epoch            completed epochs; with batch_in_epoch > 0 the run stopped inside epoch+1
    batch_in_epoch   optimiser steps already taken in the unfinished epoch (0 at epoch ends)
    step             optimiser steps taken in total
    train_size       number of training structures (a resume with another count is refused)
    model            state_dict of the trained weights
    ema              state_dict of the EMA weights, or None without EMA
    optimizer        AdamW state_dict
    normalizer       dens.normalization.Normalizer.to_dict()
    rng              {"dens": dens corruption generator state, "torch": CPU RNG state,
                      "cuda": [per-device CUDA RNG states] (empty on CPU)}  (uint8 tensors)
    epoch_sums       running sums of the unfinished epoch's loss terms (see dens.train)
    best             {"epoch": int, "val_forces_mae_meV_per_A": float} (epoch 0 = none yet)
    history          list of the log.csv rows (dicts), one per completed epoch
    timing           {"train_time_s", "step_time_s", "samples_seen"}
    num_parameters   trainable parameters of the model

run_dir/checkpoints/best.pt holds the weights evaluation uses (the EMA weights when EMA is on)
of the epoch with the lowest validation force MAE:

    format_version, kind ("best"), experiment, epoch, step, normalizer, num_parameters,
    model            state_dict of those weights
    weights          "ema" or "model": which weights `model` holds
    val              {"energy_mae_meV": float, "forces_mae_meV_per_A": float}
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

FORMAT_VERSION = 1

# Exact types: a numpy float64 is a float subclass but would not load with weights_only=True.
_PLAIN = (bool, int, float, str, type(None))
_MAPPINGS = (dict, OrderedDict)
_SEQUENCES = (list, tuple)


def _check_plain(value: Any, where: str) -> None:
    """Raise TypeError unless `value` is a tensor or a plain container of plain values."""
    if isinstance(value, Tensor) or type(value) in _PLAIN:
        return
    if type(value) in _MAPPINGS:
        for key, item in value.items():
            if type(key) not in _PLAIN:
                raise TypeError(f"checkpoint key {key!r} in {where} is a {type(key).__name__}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if type(value) in _SEQUENCES:
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__name__}; a checkpoint holds only "
        "tensors, dicts, lists, tuples, numbers, strings, bools and None (weights_only loading)"
    )


def save_checkpoint(state: Mapping[str, Any], path: Path) -> None:
    """Write `state` to `path` atomically (temporary file in the same folder, then rename)."""
    state = dict(state)
    _check_plain(state, "checkpoint")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint onto the CPU with `torch.load(weights_only=True)`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    version = state.get("format_version") if isinstance(state, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path} is not a dens checkpoint of format {FORMAT_VERSION} "
            f"(format_version={version!r})"
        )
    return state


def inference_weights(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """The weights to evaluate: best.pt's `model`, or last.pt's `ema` (`model` without EMA)."""
    if checkpoint["kind"] == "last" and checkpoint["ema"] is not None:
        return checkpoint["ema"]
    return checkpoint["model"]


def find_checkpoint(path: Path) -> Path:
    """A checkpoint file itself, or a run directory -> its checkpoints/best.pt."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "best.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (train the run first)")
    return path
