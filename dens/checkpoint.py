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
    rng              one dict per training process, in rank order (dens.distributed):
                     {"dens": its DeNS corruption generator state, "torch": CPU RNG state,
                      "cuda": [its CUDA RNG state] (empty on CPU)}  (uint8 tensors); a run
                     resumes with as many processes (a single dict: written before data
                     parallelism, one process)
    grad_scaler      GradScaler state_dict of mixed precision ({} without; absent before it)
    epoch_sums       running sums of the unfinished epoch's loss terms (see dens.train)
    best             {"epoch": int, "val_forces_mae_meV_per_A": float} (epoch 0 = none yet)
    history          list of the log.csv rows (dicts): one per completed epoch, and one per
                     validation inside an epoch (optim.val_every_steps) taken so far
    timing           {"train_time_s", "step_time_s", "samples_seen"}
    num_parameters   trainable parameters of the model

run_dir/checkpoints/best.pt holds the weights evaluation uses (the EMA weights when EMA is on)
of the epoch with the lowest validation force MAE:

    format_version, kind ("best"), experiment, epoch, step, normalizer, num_parameters,
    model            state_dict of those weights
    weights          "ema" or "model": which weights `model` holds
    val              {"energy_mae_meV": float, "forces_mae_meV_per_A": float}

`load_checkpoint` checks the archive before torch reads it (the zip directory, every member
inside the file, and each member's CRC-32): a truncated or corrupt file raises
dens.errors.CheckpointError naming it and how to retrain the run, a missing one
dens.errors.MissingDataError.
"""

from __future__ import annotations

import pickle
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dens.atomic_files import atomic_write
from dens.errors import CheckpointError, MissingDataError
from dens.layout import RunDirectory

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
    """Write `state` to `path` atomically (dens.atomic_files: temporary file in the same folder,
    fsync, rename; on failure the temporary file is removed and the previous `path` kept; a full
    or read-only folder raises dens.errors.DiskError)."""
    state = dict(state)
    _check_plain(state, "checkpoint")
    with atomic_write(path, "saving checkpoint") as handle:
        torch.save(state, handle)


RETRAIN = "retrain the run that wrote it (delete its run directory and rerun `dens train`)"
"""How to make a damaged checkpoint again (the pipeline names the run's Snakemake target
instead: dens.pipeline.remedies)."""


def check_checkpoint(path: Path) -> None:
    """Raise CheckpointError naming `path` unless it is a complete torch archive: the zip
    directory at its end, every member inside the file and matching its CRC-32 (members saved
    with CRC-32 off, torch.serialization.set_crc32_options(False), store 0 and are not checked).
    Reads the file once; runs nothing in it."""
    path = Path(path)
    size = path.stat().st_size
    try:
        if size == 0:
            raise zipfile.BadZipFile("empty: 0 bytes")
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.header_offset + info.compress_size > size:
                    raise zipfile.BadZipFile(
                        f"member {info.filename} ends past the end of the file"
                    )
                if info.CRC == 0 and info.file_size:
                    continue
                with archive.open(info) as member:  # raises BadZipFile on a CRC mismatch
                    while member.read(1 << 22):
                        pass
    except PermissionError:
        raise  # not damage: `dens` prints it as is
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, OSError) as err:
        reason = str(err) or type(err).__name__
        if reason == "File is not a zip file":
            reason = f"not a complete torch archive: no zip directory at its end; {size} bytes"
        raise CheckpointError(f"{path} is damaged ({reason})", path, RETRAIN) from err


def _unpickler_reason(error: Exception) -> str:
    """The line of torch's multi-line weights_only refusal that says what it refused."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("WeightsUnpickler error:"):
            return line.removeprefix("WeightsUnpickler error:").strip().split(". ")[0]
    return lines[0] if lines else type(error).__name__


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint onto the CPU with `torch.load(weights_only=True)`, after checking the
    archive (`check_checkpoint`). A missing, damaged or foreign file raises a DataError naming it
    (MissingDataError, CheckpointError)."""
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"checkpoint not found: {path}", path)
    check_checkpoint(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} is not a dens checkpoint: torch.load(weights_only=True) refused it "
            f"({_unpickler_reason(err)}); a dens checkpoint holds only tensors and plain "
            f"containers",
            path,
            RETRAIN,
        ) from err
    except PermissionError:
        raise
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is damaged ({reason})", path, RETRAIN) from err
    version = state.get("format_version") if isinstance(state, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} is not a dens checkpoint of format {FORMAT_VERSION} "
            f"(format_version={version!r})",
            path,
            RETRAIN,
        )
    return state


def inference_weights(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """The weights to evaluate: best.pt's `model`, or last.pt's `ema` (`model` without EMA)."""
    if checkpoint["kind"] == "last" and checkpoint["ema"] is not None:
        return checkpoint["ema"]
    return checkpoint["model"]


def find_checkpoint(path: Path) -> Path:
    """A checkpoint file itself, or a run directory -> its checkpoints/best.pt (also when the
    directory does not exist: the missing file is named)."""
    path = Path(path)
    if path.is_dir() or (not path.exists() and path.suffix != ".pt"):
        path = RunDirectory(path).checkpoint()
    if not path.is_file():
        raise MissingDataError(f"no checkpoint at {path}", path, "train the run first")
    return path
