"""What the importers of fairchem 1.x checkpoints (EquiformerV2, eSCN) share: the error they
raise, the checked read of the file, the arguments both derive alike from the reference's config
(the settings that must hold, one resolution, the DeNS switches), the state_dict without DDP
prefixes and with the EMA averages swapped in, the fold of an
unused force encoding, the exact load that names every key it cannot map and the ``info`` both
return."""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dens.errors import CheckpointError, MissingDataError


class CheckpointImportError(CheckpointError):
    """The checkpoint is not one this importer can map exactly; the message names why (a
    ValueError, and one line from the ``dens`` command)."""


# what torch.load's weights-only unpickler names when it refuses a global (torch 2.4 to 2.13)
REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
REFUSED_OPCODE = re.compile(r"Unsupported operand (\d+)")
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip container (torch >= 1.6)
LEGACY_MAGIC = b"\x80\x02"  # torch.save's legacy format: a protocol-2 pickle


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checkpoint at ``path`` and its config with ``config["model"]`` one mapping (name and
    arguments). Read with ``torch.load(weights_only=True)``: tensors and plain containers only,
    nothing in the file runs. ocp checkpoints (ocp 5d0f59e ``BaseTrainer.__init__``,
    base_trainer.py lines 97-100: the DeNS checkpoints) keep the model's name in
    ``config["model"]`` and its arguments in ``config["model_attributes"]``; they are merged as
    fairchem 1.x's calculator merges them (``common/relaxation/ase_utils.py`` lines 208-210).

    Raises MissingDataError for a missing file and CheckpointImportError, naming the file, for
    anything else that is not such a checkpoint: a directory, an empty, truncated or non-torch
    file, a pickle that needs a global weights-only loading refuses (named), a checkpoint
    without ``state_dict``, ``config`` or ``config["model"]``."""
    path = Path(path)
    size = _check_file(path)
    checkpoint = _load(path, size)
    _check_contents(path, checkpoint)
    return dict(checkpoint), _merged_config(path, checkpoint)


def _check_file(path: Path) -> int:
    """The size in bytes of the file at ``path``, after checking that it exists and starts as a
    torch.save checkpoint (MissingDataError, CheckpointImportError)."""
    if not path.exists():
        raise MissingDataError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointImportError(f"{path} is not a file (a checkpoint is one .pt file)")
    with open(path, "rb") as handle:
        head = handle.read(4)
    size = path.stat().st_size
    if size == 0:
        raise CheckpointImportError(f"{path} is empty (0 bytes); download it again")
    if head[:1] == b"\x80" and not head.startswith(LEGACY_MAGIC):
        raise CheckpointImportError(
            f"{path} is a plain pickle (protocol {head[1]}), not a torch.save checkpoint; not read"
        )
    if not head.startswith((ZIP_MAGIC, LEGACY_MAGIC)):
        raise CheckpointImportError(
            f"{path} is not a torch checkpoint (it starts with {head!r}: a text or HTML page "
            "saved under its name?)"
        )
    if head == ZIP_MAGIC and not zipfile.is_zipfile(path):
        raise CheckpointImportError(
            f"{path} is truncated or damaged ({size} bytes: its zip archive has no central "
            "directory); download it again"
        )
    return size


def _load(path: Path, size: int) -> Any:
    """``torch.load(weights_only=True)`` of the checkpoint at ``path`` (``size`` bytes), its
    errors as CheckpointImportError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointImportError(f"{path}: {refusal(error)}") from None
    except (RuntimeError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as error:
        detail = str(error).split(".")[0] or type(error).__name__
        raise CheckpointImportError(
            f"{path} is truncated or damaged ({size} bytes; torch.load: {detail}); download it "
            "again"
        ) from None


def _check_contents(path: Path, checkpoint: Any) -> None:
    """CheckpointImportError unless ``checkpoint`` is a mapping with a non-empty
    ``state_dict`` and a non-empty ``config`` mapping."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointImportError(
            f"{path}: not a fairchem checkpoint (it holds a {type(checkpoint).__name__}, not a "
            "dict with 'state_dict' and 'config')"
        )
    missing = [key for key in ("state_dict", "config") if key not in checkpoint]
    if missing:
        raise CheckpointImportError(
            f"{path}: not a fairchem checkpoint (no {' and no '.join(map(repr, missing))}; "
            f"its keys: {', '.join(sorted(map(str, checkpoint)))})"
        )
    empty = [key for key in ("state_dict", "config") if not checkpoint[key]]
    if empty:
        raise CheckpointImportError(
            f"{path}: not a fairchem checkpoint (its {' and its '.join(map(repr, empty))} "
            f"{'are' if len(empty) > 1 else 'is'} empty)"
        )
    if not isinstance(checkpoint["config"], Mapping):
        raise CheckpointImportError(f"{path}: the checkpoint's 'config' is not a mapping")


def _merged_config(path: Path, checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint's config with ``config["model"]`` one mapping (name and arguments)."""
    config = dict(checkpoint["config"])
    model = config.get("model")
    if isinstance(model, str):
        model = {"name": model, **(config.get("model_attributes") or {})}
    if not isinstance(model, Mapping):
        raise CheckpointImportError(f"{path}: the checkpoint's config has no 'model' section")
    config["model"] = dict(model)
    return config


def refusal(error: pickle.UnpicklingError) -> str:
    """What weights-only loading refused, from torch's message (which the one line replaces)."""
    text = str(error)
    found = REFUSED_GLOBAL.search(text)
    if found:
        return (
            f"refused: its pickle needs the global {found.group(1)}, which weights-only loading "
            "does not run (a fairchem checkpoint holds only tensors and plain containers; nothing "
            "in the file was run)"
        )
    found = REFUSED_OPCODE.search(text)
    if found:
        return (
            f"refused: not a torch.save file weights-only loading reads (pickle opcode "
            f"{found.group(1)}); nothing in the file was run"
        )
    return "refused by weights-only loading; nothing in the file was run"


def strip_prefix(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop the "module." prefixes of (nested) DistributedDataParallel wrappers."""
    out = {}
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module.") :]
        out[key] = value
    return out


def normalizers(checkpoint: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, dict]:
    """{"energy": {"mean", "std"}, "forces": {...}, ...} as floats, from the checkpoint's
    normalizers (fairchem 1.x: mean / rmsd; older: target / grad_target) or else the config."""
    out: dict[str, dict] = {}
    saved = checkpoint.get("normalizers") or {}
    aliases = {"target": "energy", "grad_target": "forces"}
    for key, value in saved.items():
        if isinstance(value, Mapping) and "mean" in value:
            std = value.get("rmsd", value.get("std"))
            out[aliases.get(key, key)] = {"mean": float(value["mean"]), "std": float(std)}
    dataset = config.get("dataset") or {}
    if isinstance(dataset, Mapping):  # fairchem 1.x: {"train": ...}; ocp: the train dataset
        dataset = dataset.get("train", dataset)
    transforms = (dataset.get("transforms") if isinstance(dataset, Mapping) else None) or {}
    for key, value in (transforms.get("normalizer") or {}).items():
        if key not in out and isinstance(value, Mapping) and "mean" in value:
            out[key] = {"mean": float(value["mean"]), "std": float(value["stdev"])}
    return out


def reference_arguments(
    settings: Mapping[str, Any],
    required: Mapping[str, tuple[Any, Any]],
    family: str,
    dens: bool,
) -> tuple[int, int, dict[str, bool]]:
    """lmax, mmax and the DeNS switches (force_encoding, noise_head) of a reference model's
    settings; ``dens``: the model is a DeNS one. CheckpointImportError naming the settings that
    differ from ``required`` ({key: (the value that maps, fairchem 1.x's default)}) and for several
    resolutions (``lmax_list`` of more than one entry)."""
    wrong = {
        key: settings.get(key, default)
        for key, (value, default) in required.items()
        if settings.get(key, default) != value
    }
    if wrong:
        raise CheckpointImportError(
            f"settings our {family} does not have: {wrong} "
            f"(maps only { {key: value for key, (value, _) in required.items()} })"
        )
    lmax_list, mmax_list = settings.get("lmax_list", [6]), settings.get("mmax_list", [2])
    if len(lmax_list) != 1 or len(mmax_list) != 1:
        raise CheckpointImportError(f"several resolutions (lmax_list {lmax_list}) do not map")
    switches = {
        "force_encoding": dens and bool(settings.get("use_force_encoding", True)),
        "noise_head": dens,
    }
    return int(lmax_list[0]), int(mmax_list[0]), switches


def checkpoint_state(
    checkpoint: Mapping[str, Any],
    use_ema: bool,
    tracked: Callable[[Mapping[str, Tensor]], list[str]],
) -> tuple[dict[str, Tensor], bool]:
    """The checkpoint's state_dict without the "module." prefixes (``strip_prefix``) and, when
    ``use_ema`` and the checkpoint holds EMA averages (``ema["shadow_params"]``), with them in
    place of the parameters ``tracked(state)`` names (the ones fairchem's EMA tracks, in order);
    and whether EMA weights were put in."""
    state = strip_prefix(checkpoint["state_dict"])
    ema = checkpoint.get("ema")
    if not (use_ema and ema and ema.get("shadow_params")):
        return state, False
    return ema_parameters(state, tracked(state), ema["shadow_params"]), True


def ema_parameters(
    state: dict[str, Tensor], names: Sequence[str], shadow: Sequence[Tensor]
) -> dict[str, Tensor]:
    """``state`` with the EMA's averages ``shadow`` in place of the parameters ``names`` (the
    ones fairchem's EMA tracks, in order); refused when counts or shapes differ."""
    if len(names) != len(shadow) or any(
        state[n].shape != s.shape for n, s in zip(names, shadow, strict=False)
    ):
        raise CheckpointImportError(
            f"EMA has {len(shadow)} tensors for {len(names)} parameters, or shapes differ; "
            "load with use_ema=False"
        )
    return {**state, **dict(zip(names, shadow, strict=True))}


def fold_unused_force_encoding(state: dict[str, Tensor], arguments: Mapping[str, Any]) -> None:
    """A DeNS backbone without force encoding still adds force_embedding's bias at l = 0: fold
    it into the atom embedding (``sphere_embedding``) and drop the encoding's weight."""
    if arguments["noise_head"] and not arguments["force_encoding"]:
        bias = state.pop("force_embedding.bias", None)
        if bias is not None and "sphere_embedding.weight" in state:
            state["sphere_embedding.weight"] = state["sphere_embedding.weight"] + bias
        state.pop("force_embedding.weight", None)


def load_exactly(
    model: nn.Module,
    state: dict[str, Tensor],
    family: str,
    origin: Mapping[str, str] | None = None,
) -> None:
    """Load every parameter of ``model``; refuse extra, missing or differently shaped ones by
    name (``origin``: the checkpoint's names of renamed keys, ours for missing ones)."""
    ours, origin = model.state_dict(), origin or {}
    extra = sorted(origin.get(k, k) for k in set(state) - set(ours))
    missing = sorted(set(ours) - set(state))
    shapes = sorted(
        f"{k}: {tuple(state[k].shape)} vs {tuple(ours[k].shape)}"
        for k in set(state) & set(ours)
        if state[k].shape != ours[k].shape
    )
    if extra or missing or shapes:
        raise CheckpointImportError(
            f"the checkpoint does not map onto {family}: "
            + "; ".join(
                f"{what}: {', '.join(names)}"
                for what, names in (
                    ("unmatched checkpoint keys", extra),
                    ("missing keys", missing),
                    ("shape mismatches", shapes),
                )
                if names
            )
        )
    model.load_state_dict(state, strict=True)


def import_info(
    checkpoint: Mapping[str, Any],
    config: Mapping[str, Any],
    arguments: Mapping[str, Any],
    ema: bool,
) -> dict[str, Any]:
    """The ``info`` every importer returns: ``config`` (the checkpoint's), ``normalizers``,
    ``ema`` (whether EMA weights were loaded) and ``hyperparameters`` (our constructor's)."""
    return {
        "config": config,
        "normalizers": normalizers(checkpoint, config),
        "ema": ema,
        "hyperparameters": arguments,
    }
