"""A run's settings, read from the resolved experiment once (``TrainSettings.from_experiment``).

The experiment's ``optim`` mapping (config/experiments.yaml with the scale's overrides) holds the
optimisation (``OptimSettings``), the loss (dens.denoising.LossSettings: ``loss_settings``), the
validation (``EvaluationSettings``) and the label normaliser (``LabelSettings``); its ``dens``
mapping the DeNS settings (dens.denoising.DeNSSettings), None without DeNS.

Each setting's default and range are stated here, once, in its dataclass field
(dens.setting_fields: ``setting`` gives the range in JSON Schema's words, ``check_fields``
enforces it with the field's type). workflow/schemas/experiments.schema.yaml checks the
same keys when Snakemake builds the DAG: its ranges, its required keys (the fields without a
default) and its defaults are the same (tests/test_training_settings.py compares them); the
checks no schema states (a multistep schedule needs its decay epochs, ...) are in the
dataclasses' ``__post_init__``. A setting that is wrong raises dens.errors.ConfigError naming
its key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from dens.denoising import DeNSSettings, LossSettings
from dens.errors import ConfigError
from dens.setting_fields import check_fields, config_keys, from_mapping, setting

LRScheduleKind = Literal["cosine", "cosine_total", "multistep", "cosine_epoch_timm"]
EnergyReference = Literal["mean", "linear"]


@dataclass(frozen=True)
class OptimSettings:
    """AdamW, its learning-rate schedule, the length of a run, EMA, clipping, mixed precision.

    lr_schedule: how the lr goes from warm-up to min_lr (dens.training.schedule.learning_rate);
    warmup_epochs (fractions allowed), warmup_start_factor (the warm-up starts at this fraction
    of lr), warmup_lr (cosine_epoch_timm: the lr of epoch 0); decay_epochs and decay_rate
    (multistep). max_steps: the run ends after that many optimiser steps (validated and
    checkpointed as at an epoch's end), the schedule staying that of all ``epochs`` (a cap of the
    rehearsal scale; None: every epoch). batch_size is the global batch of all training
    processes. grad_clip_norm: the
    gradient norm is clipped to it (None: no clipping); ema_decay: the EMA of the weights after
    every step (None: no EMA); amsgrad: AdamW's variant; mixed_precision: float16 autocast +
    GradScaler on CUDA (dens.training.trainee.use_mixed_precision).
    """

    optimizer: Literal["adamw"]
    lr: float = setting(exclusiveMinimum=0)
    min_lr: float = setting(minimum=0)
    lr_schedule: LRScheduleKind = setting()
    warmup_epochs: float = setting(minimum=0)
    epochs: int = setting(minimum=1)
    batch_size: int = setting(minimum=1)
    weight_decay: float = setting(minimum=0)
    grad_clip_norm: float | None = setting(exclusiveMinimum=0)
    ema_decay: float | None = setting(exclusiveMinimum=0, exclusiveMaximum=1)
    amsgrad: bool = False
    mixed_precision: bool = True
    warmup_start_factor: float = setting(0.0, minimum=0, maximum=1)
    warmup_lr: float | None = setting(None, minimum=0)
    decay_epochs: tuple[float, ...] | None = setting(None, exclusiveMinimum=0)
    decay_rate: float | None = setting(None, exclusiveMinimum=0, maximum=1)
    max_steps: int | None = setting(None, minimum=1)

    def __post_init__(self) -> None:
        check_fields(self, "optim")
        multistep = (self.decay_epochs, self.decay_rate)
        if self.lr_schedule == "multistep" and None in multistep:
            raise ConfigError("optim.lr_schedule 'multistep' needs decay_epochs and decay_rate")
        if self.lr_schedule != "cosine_epoch_timm":
            return
        if self.warmup_lr is None:
            raise ConfigError("optim.lr_schedule 'cosine_epoch_timm' needs warmup_lr")
        if math.ceil(self.warmup_epochs) >= self.epochs:
            raise ConfigError(
                f"optim.lr_schedule 'cosine_epoch_timm' sets the lr per epoch: with "
                f"warmup_epochs {self.warmup_epochs:g} every one of the {self.epochs} "
                "epochs trains at a warm-up lr (warmup_epochs 0 starts at lr)"
            )

    @classmethod
    def from_optim(cls, optim: Mapping[str, Any]) -> OptimSettings:
        """The settings of an experiment's ``optim`` (its other keys are left alone)."""
        return from_mapping(cls, optim, "optim")


@dataclass(frozen=True)
class EvaluationSettings:
    """Validation during training: batch_size structures per forward pass; every_steps: also
    validate after every that many optimiser steps (counted over the run) inside an epoch, a
    log.csv row each (None: at epoch ends only). The best checkpoint is chosen at epoch ends
    only."""

    batch_size: int = setting(key="eval_batch_size", minimum=1)
    every_steps: int | None = setting(None, key="val_every_steps", minimum=1)

    def __post_init__(self) -> None:
        check_fields(self, "optim")

    @classmethod
    def from_optim(cls, optim: Mapping[str, Any]) -> EvaluationSettings:
        return from_mapping(cls, optim, "optim")


@dataclass(frozen=True)
class GivenNormalizer:
    """An official config's label normaliser, used as given: E' = (E - reference -
    energy_mean) / energy_std, f' = f / force_std."""

    energy_mean: float
    energy_std: float = setting(exclusiveMinimum=0)
    force_std: float = setting(exclusiveMinimum=0)

    def __post_init__(self) -> None:
        check_fields(self, "optim.normalizer")


@dataclass(frozen=True)
class LabelSettings:
    """How the labels are normalised (dens.training.labels.training_normalizer).

    energy_reference: "mean" (mean and std per structure) or "linear" (per-element references
        first); None: "linear" with an energy_reference_file, else "mean" (``reference``).
    energy_reference_file: a published linear reference (npz; relative to the pipeline
        directory, or absolute) instead of one fitted on the training set.
    normalizer: the official config's mean and stds instead of ones fitted here.
    """

    energy_reference: EnergyReference | None = None
    energy_reference_file: str | None = None
    normalizer: GivenNormalizer | None = None

    def __post_init__(self) -> None:
        check_fields(self, "optim")
        if self.energy_reference_file is not None and self.reference != "linear":
            raise ConfigError(
                f"optim.energy_reference_file {self.energy_reference_file!r} is a linear "
                f"reference; optim.energy_reference {self.energy_reference!r} contradicts it"
            )
        if self.normalizer is not None and self.reference == "linear":
            if self.energy_reference_file is None:
                raise ConfigError(
                    "optim.normalizer with energy_reference 'linear' needs "
                    "optim.energy_reference_file: the given mean and std belong to a fixed "
                    "reference, not one fitted here"
                )

    @property
    def reference(self) -> EnergyReference:
        """The energy reference in effect (``energy_reference`` or its default)."""
        if self.energy_reference is not None:
            return self.energy_reference
        return "mean" if self.energy_reference_file is None else "linear"

    @classmethod
    def from_optim(cls, optim: Mapping[str, Any]) -> LabelSettings:
        given = {key: optim.get(key) for key in config_keys(cls)}
        if isinstance(given["normalizer"], Mapping):
            given["normalizer"] = from_mapping(
                GivenNormalizer, given["normalizer"], "optim.normalizer"
            )
        return cls(**given)


LOSS_KEYS = {
    "energy_coefficient": "energy_coefficient",
    "force_coefficient": "force_coefficient",
    "force_loss": "force_metric",
    "noise_loss": "noise_metric",
    "loss_reduction": "reduction",
}
"""optim key -> dens.denoising.LossSettings field (with ``energy_loss``, always "mae")."""


def loss_settings(optim: Mapping[str, Any]) -> LossSettings:
    """LossSettings from optim: energy/force coefficients, force_loss; noise_loss and
    loss_reduction where given (LossSettings' defaults otherwise). The energy loss is always
    |E' - E_hat| (energy_loss "mae")."""
    if optim.get("energy_loss", "mae") != "mae":
        raise ConfigError(f"optim.energy_loss must be 'mae', got {optim['energy_loss']!r}")
    missing = [key for key in ("energy_coefficient", "force_coefficient") if key not in optim]
    if missing:
        raise ConfigError(f"optim.{missing[0]} must be set")
    given = {name: optim[key] for key, name in LOSS_KEYS.items() if optim.get(key) is not None}
    try:
        return LossSettings(**given)
    except ValueError as error:
        raise ConfigError(f"optim: {error}") from None


OPTIM_KEYS = frozenset(
    config_keys(OptimSettings)
    | config_keys(EvaluationSettings)
    | config_keys(LabelSettings)
    | {*LOSS_KEYS, "energy_loss"}
)
"""Every key an experiment's ``optim`` may hold."""


@dataclass(frozen=True)
class TrainSettings:
    """Everything ``dens.train.train`` reads from an experiment besides its model: the run's
    name and seed, optimisation, loss, validation, label normaliser and DeNS (``denoising``,
    None without DeNS)."""

    name: str
    seed: int = setting(minimum=0, exclusiveMaximum=2**32)
    optim: OptimSettings = setting()
    loss: LossSettings = setting()
    evaluation: EvaluationSettings = setting()
    labels: LabelSettings = setting()
    denoising: DeNSSettings | None = setting()

    def __post_init__(self) -> None:
        check_fields(self, "")

    @classmethod
    def from_experiment(cls, experiment: Mapping[str, Any]) -> TrainSettings:
        """The settings of a resolved experiment (dens.pipeline.registry, or a dict of the same
        shape); an unknown key of its ``optim`` is refused."""
        optim = experiment["optim"]
        unknown = sorted(set(optim) - OPTIM_KEYS)
        if unknown:
            raise ConfigError(f"optim has unknown key(s) {unknown}; known: {sorted(OPTIM_KEYS)}")
        denoising = experiment.get("dens")
        return cls(
            name=experiment["name"],
            seed=experiment["seed"],
            optim=OptimSettings.from_optim(optim),
            loss=loss_settings(optim),
            evaluation=EvaluationSettings.from_optim(optim),
            labels=LabelSettings.from_optim(optim),
            denoising=None if denoising is None else DeNSSettings.from_config(denoising),
        )
