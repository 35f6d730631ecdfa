"""Inference with a trained (or imported) run: load it once, predict energy and forces.

Evaluation, the ASE calculator, relaxations, simulations and checkpoint import all go through
this module. A run's checkpoint (dens.checkpoint) holds the resolved experiment, the inference
weights (best.pt: the EMA weights of the best-validation epoch when EMA is on) and the label
normalisation (dens.normalization). Predictions use no noise and no force input (DeNS is a
training-time auxiliary task, paper Sec. 3.2), and energies are de-normalised in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dens.checkpoint import find_checkpoint, inference_weights, load_checkpoint
from dens.data.batch import Batch
from dens.models import build_model as build_registered_model
from dens.normalization import Normalizer

BuildModel = Callable[[dict], nn.Module]


@dataclass(frozen=True)
class TrainedModel:
    """A model with inference weights loaded, in eval mode with frozen parameters, and the
    normalisation of its labels."""

    model: nn.Module
    normalizer: Normalizer
    checkpoint: dict[str, Any]

    @property
    def experiment(self) -> dict[str, Any]:
        """The resolved experiment the run was trained with."""
        return self.checkpoint["experiment"]

    def predict(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Energy [B] (eV, float64) and forces [N, 3] (eV/Å) of a batch (see ``predict``)."""
        return predict(self.model, batch, self.normalizer)


def load_trained_model(
    path: Path,
    build_model: BuildModel = build_registered_model,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TrainedModel:
    """Build a run's model and load its inference weights.

    path: a run directory (-> checkpoints/best.pt) or a checkpoint file (best.pt or last.pt).
    build_model: called with the experiment dict stored in the checkpoint (default: the model
        families of dens.models).
    """
    checkpoint = load_checkpoint(find_checkpoint(path))
    model = build_model(checkpoint["experiment"])
    model.load_state_dict(inference_weights(checkpoint))
    model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return TrainedModel(model, Normalizer.from_dict(checkpoint["normalizer"]), checkpoint)


def predict(model: nn.Module, batch: Batch, normalizer: Normalizer) -> tuple[Tensor, Tensor]:
    """Energy [B] (eV, float64) and forces [N, 3] (eV/Å, model dtype) of a batch, de-normalised;
    no noise head, no force input. Gradient-force models get autograd enabled."""
    with torch.set_grad_enabled(bool(getattr(model, "gradient_forces", False))):
        out = model(batch)
    energy = normalizer.denormalize_energy(
        out["energy"].detach(), batch.atomic_numbers, batch.batch
    )
    return energy, normalizer.denormalize_forces(out["forces"].detach())
