"""DeNS and loss settings (dens.denoising): ``DeNSSettings``, ``LossSettings`` and the
lambda_DeNS schedule ``dens_coefficient``."""

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from dens.setting_fields import check_fields, setting

CoefficientDecay = Literal["constant", "linear"]
ForceEncodingUnits = Literal["normalized", "eV/Å", "kcal/mol/Å"]
ErrorMetric = Literal["l2mae", "mse", "mae"]
Reduction = Literal["structure", "atom", "free_atoms"]
Decision = Literal["structure", "batch"]


@dataclass(frozen=True)
class DeNSSettings:
    """Hyper-parameters of DeNS (Section 3.2.3, Tables 7-9).

    p: p_DeNS, probability that a structure (decision "batch": a whole batch) optimises DeNS
        instead of the original task.
    sigma: standard deviation of the Gaussian position noise in Å (Eq. 2).
    corruption_ratio: r_DeNS, probability that a free atom of a DeNS structure is corrupted.
    coefficient: lambda_DeNS, weight of L_DeNS in Eq. 6.
    force_encoding: encode the forces of corrupted atoms (Eq. 5); False = ablation.
    energy_loss: keep lambda_E * |E' - E_hat| of Eq. 6 for corrupted structures; False = ablation.
    partial_corruption: corrupt a random subset of free atoms; False = ablation that corrupts
        every free atom of a DeNS structure (corruption_ratio is then unused).
    coefficient_decay: "constant", or "linear" decay of lambda_DeNS towards 0 over training
        (MD17, App. D.2); see ``dens_coefficient``.
    force_encoding_units: units of the forces the force encoding receives (Eq. 5), see
        ``force_encoding_input``: "normalized" (f / sigma_F, Algorithm 2 line 19), "eV/Å" (raw
        labels) or "kcal/mol/Å" (the raw units of the MD17 dataset, which the official MD17
        code encodes; the paper's MD17 numbers come from it).
    decision: "structure" (Algorithm 2, the MD17 code) or "batch" (the official OC20/OC22
        trainer): which structures optimise DeNS, see the module notes.
    """

    p: float = setting(minimum=0, maximum=1)
    sigma: float = setting(exclusiveMinimum=0)
    corruption_ratio: float = setting(exclusiveMinimum=0, maximum=1)
    coefficient: float = setting(minimum=0)
    force_encoding: bool = True
    energy_loss: bool = True
    partial_corruption: bool = True
    coefficient_decay: CoefficientDecay = "constant"
    force_encoding_units: ForceEncodingUnits = "normalized"
    decision: Decision = "structure"

    @classmethod
    def from_config(cls, dens: Mapping[str, Any]) -> "DeNSSettings":
        """The settings of an experiment's ``dens`` entry (config/experiments.yaml, validated by
        workflow/schemas/experiments.schema.yaml); keys the entry lacks take the defaults."""
        names = {field.name for field in fields(cls)}
        unknown = sorted(set(dens) - names)
        if unknown:
            raise ValueError(f"dens settings have unknown key(s) {unknown}; known: {sorted(names)}")
        return cls(**dens)

    def __post_init__(self) -> None:
        check_fields(self, "dens")


@dataclass(frozen=True)
class LossSettings:
    """Coefficients and per-atom errors of the original task (Eq. 1) and of Eq. 6.

    energy_coefficient: lambda_E. force_coefficient: lambda_F.
    force_metric: per-atom force error, "l2mae" (OC20/OC22 configs, official MD17 code),
        "mse" (Eq. 1 as written) or "mae".
    noise_metric: per-atom error of the noise prediction in L_DeNS; "mse" is Eq. 4 as written,
        both official codes use "l2mae".
    reduction: "structure" (Algorithm 2), "atom" (official MD17 code) or "free_atoms" (official
        OC20/OC22 trainer); see the module notes.
    """

    energy_coefficient: float = setting(minimum=0)
    force_coefficient: float = setting(minimum=0)
    force_metric: ErrorMetric = "l2mae"
    noise_metric: ErrorMetric = "mse"
    reduction: Reduction = "structure"

    def __post_init__(self) -> None:
        check_fields(self, "loss")


def dens_coefficient(settings: DeNSSettings, epoch: int, epochs: int) -> float:
    """lambda_DeNS during epoch ``epoch`` (0-based) of ``epochs``.

    "constant": settings.coefficient. "linear" (MD17, App. D.2): coefficient * (1 - epoch /
    epochs), updated once per epoch as the official MD17 code does (atomicarchitects/equiformer
    ``main_md17_dens.py``; the paper's MD17 numbers come from it): the full value in the first
    epoch, coefficient / epochs in the last, never exactly 0.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < epochs:
        raise ValueError(f"epoch must be an int in [0, {epochs - 1}], got {epoch!r}")
    if settings.coefficient_decay == "constant":
        return settings.coefficient
    return settings.coefficient * (1.0 - epoch / epochs)
