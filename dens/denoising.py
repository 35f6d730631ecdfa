"""DeNS core: structure corruption, force-encoding input and training losses.

Model-agnostic part of "Generalizing Denoising to Non-Equilibrium Structures Improves
Equivariant Force Fields" (Liao, Smidt, Shuaibi, Das; TMLR 2024). The training engine glues
it to a model::

    forces = force_encoding_input(batch.forces, force_std, dens_settings.force_encoding_units)
    corruption = corrupt(batch, dens_settings, generator, forces=forces,
                         batch_generator=decision_generator)   # the latter for decision "batch"
    inputs = batch.clone()
    inputs.pos = corruption.pos
    prediction = model(inputs, corruption.force_input, predict_noise=True)
    terms = dens_loss(prediction, batch, corruption, energy_target, force_target,
                      loss_settings, dens_settings, dens_coefficient(dens_settings, epoch, epochs))
    terms["total"].backward()

Notation (Section 3): B structures, N atoms in the batch, ``batch`` [N] maps atoms to
structures. Energies and forces are in the engine's normalised units, E' = (E - mu_E) / sigma_E
and f' = f / sigma_F (Eq. 1); the noise head predicts eps / sigma (Eq. 3-4).

Decisions (each checked against the official code, atomicarchitects/DeNS for OC20/OC22 and
atomicarchitects/equiformer ``main_md17_dens.py`` for MD17):

- Which structures (``DeNSSettings.decision``): "structure" (default) = one Bernoulli(p_DeNS)
  draw per structure inside one mixed batch (Algorithm 2 line 7; App. D.1, as the MD17 code
  does: atomicarchitects/equiformer ``main_md17_dens.py``); structures with ``md_split`` True
  are never DeNS structures. "batch" = the official OC20/OC22 trainer (atomicarchitects/DeNS
  e98b747 ``trainers/denoising_forces_trainer.py``:369, ``np.random.rand() < prob`` once per
  batch, numpy seeded alike on every rank by the base trainer's ``set_seed``): one draw from
  ``batch_generator`` (seeded alike on every process) makes every structure of the global batch
  a DeNS structure or none; the atoms of MD-split structures are still never corrupted
  (``add_gaussian_noise_to_position``, lines 67-75), and the corruption mask is drawn over all
  atoms, so a fixed atom it selects gets its force encoded (``equiformer_v2_denoising.py``:337-339
  masks the encoding by ``noise_mask`` only) but no noise (lines 83-84 move free atoms only) and
  no loss (``_compute_loss`` keeps free atoms, lines 491 and 215). Without partial corruption
  every atom of a non-MD structure of a DeNS batch, fixed ones too, has its force encoded.
- Which atoms: each free atom of a DeNS structure is corrupted independently with probability
  r_DeNS (Algorithm 2 lines 10-11). Fixed atoms are never corrupted. A DeNS structure whose
  draws corrupt no atom is kept as it is, as in both official codes (neither forces a
  corruption): it has no noise and no force input, and its loss is exactly Eq. 1 (Algorithm 2
  lines 24-27 with all m_i = 0; the no-energy-loss ablation only drops the energy term of
  structures that have a corrupted atom, since the ablation is about predicting the energy of
  the original structure from a corrupted one). With decision "batch" the ablation drops the
  energy term of every structure of a DeNS batch, as the official model zeroes the whole
  batch's energy (``equiformer_v2_denoising.py``:432-434; its logged term keeps the constant
  lambda_E |E'|, which has no gradient; ours is 0).
- Loss normalisation, ``reduction="structure"`` (default, Algorithm 2): per structure j,
  L_DeNS and L_F are sums over its atoms divided by |S_j|, the number of its free atoms (the
  atoms that carry a loss; fixed atoms are excluded as in the OC20 ``train_on_free_atoms``
  setting), and the batch loss is L_total / B. With partial corruption the denoising term is
  therefore NOT a mean over corrupted atoms: it is divided by |S_j| (line 25), which gives every
  loss-carrying atom the weight lambda_DeNS or lambda_F, like the official OC20 hybrid loss.
  With all atoms corrupted it is Eq. 4 exactly. ``reduction="atom"`` reproduces the official
  MD17 code instead: energy mean over structures, force term mean over all uncorrupted free
  atoms of the batch, denoising term mean over all corrupted atoms of the batch. The two differ
  in the effective weight of the denoising term by about p_DeNS * r_DeNS (1/16 with the MD17
  values of Table 9). ``reduction="free_atoms"`` is the official OC20/OC22 trainer's
  (``_compute_loss``, lines 488-627): energy lambda_E |E' - E_hat| averaged over the B
  structures; forces and noise share ONE mean over the free atoms of the whole batch,
      L_F + L_DeNS = (lambda_F sum_{free i, m_i = 0} err_F + lambda_DeNS sum_{m_i = 1} err_eps)
                     / n_free
  (a DeNS batch with partial corruption: ``compute_atomwise_denoising_pos_and_force_hybrid_loss``,
  line 204; otherwise fairchem's ``DDPLoss`` mean, ocpmodels/modules/loss.py at ocp 5d0f59e, with
  n_free counted over the global batch: ``free_atoms_per_process`` below). Uncorrupted atoms of
  MD-split structures carry the force term, as any uncorrupted free atom. The official code
  also takes the hybrid (per-process) mean for a corrupt-all DeNS batch of the All+MD dataset
  (its batches carry ``md``, so ``noise_mask`` exists); no experiment combines the two, and
  this one counts the global batch there (it differs only with several processes).
- Per-atom error (``ErrorMetric``): "l2mae" = ||x - y||_2, "mse" = ||x - y||_2^2 (Eq. 1, 4, 6
  as written), "mae" = mean_k |x_k - y_k|. The official MD17 code (``main_md17.py`` and
  ``main_md17_dens.py``, ``criterion = L2MAELoss()``) uses "l2mae" for the energy, the forces
  and the noise; its component-wise mean absolute error is only the logged MAE metric. The
  OC20/OC22 configs use "l2mae" for forces and, in the hybrid loss, for the noise as well.
  Eq. 4 writes a squared norm, hence the ``noise_metric`` default "mse".
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

import torch
from ase import units
from torch import Tensor

from dens.data.batch import Batch

CoefficientDecay = Literal["constant", "linear"]
ForceEncodingUnits = Literal["normalized", "eV/Å", "kcal/mol/Å"]
ErrorMetric = Literal["l2mae", "mse", "mae"]
Reduction = Literal["structure", "atom", "free_atoms"]
Decision = Literal["structure", "batch"]


def _check_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    return float(value)


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


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

    p: float
    sigma: float
    corruption_ratio: float
    coefficient: float
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
        p = _check_real("p", self.p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must satisfy 0 <= p <= 1, got {self.p!r}")
        sigma = _check_real("sigma", self.sigma)
        if not (sigma > 0.0 and math.isfinite(sigma)):
            raise ValueError(f"sigma must be a finite number > 0 (Å), got {self.sigma!r}")
        ratio = _check_real("corruption_ratio", self.corruption_ratio)
        if not 0.0 < ratio <= 1.0:
            raise ValueError(
                f"corruption_ratio must satisfy 0 < r <= 1, got {self.corruption_ratio!r}"
            )
        coefficient = _check_real("coefficient", self.coefficient)
        if not (coefficient >= 0.0 and math.isfinite(coefficient)):
            raise ValueError(f"coefficient must be a finite number >= 0, got {self.coefficient!r}")
        _check_bool("force_encoding", self.force_encoding)
        _check_bool("energy_loss", self.energy_loss)
        _check_bool("partial_corruption", self.partial_corruption)
        _check_choice("coefficient_decay", self.coefficient_decay, get_args(CoefficientDecay))
        _check_choice(
            "force_encoding_units", self.force_encoding_units, get_args(ForceEncodingUnits)
        )
        _check_choice("decision", self.decision, get_args(Decision))


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

    energy_coefficient: float
    force_coefficient: float
    force_metric: ErrorMetric = "l2mae"
    noise_metric: ErrorMetric = "mse"
    reduction: Reduction = "structure"

    def __post_init__(self) -> None:
        for name in ("energy_coefficient", "force_coefficient"):
            value = _check_real(name, getattr(self, name))
            if not (value >= 0.0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        _check_choice("force_metric", self.force_metric, get_args(ErrorMetric))
        _check_choice("noise_metric", self.noise_metric, get_args(ErrorMetric))
        _check_choice("reduction", self.reduction, get_args(Reduction))


@dataclass(frozen=True)
class Corruption:
    """One draw of DeNS corruption for a batch (Algorithm 2 lines 5-22).

    Built by ``corrupt``, or directly (e.g. with draws injected from another code).

    dens_structures: bool [B], structures that optimise DeNS (Eq. 6); the others Eq. 1. With
        decision "batch": all B or none (MD-split ones included: their atoms stay uncorrupted).
    corrupted: bool [N], m_i: free atoms with noise and a denoising target (never fixed ones).
    noise: float [N, 3], eps_i ~ N(0, sigma^2 I) in Å on corrupted atoms, exactly 0 elsewhere.
    pos: float [N, 3], model input positions pos + noise (Eq. 2).
    force_input: float [N, 3], forces to encode on corrupted atoms (with decision "batch" also
        on the fixed atoms the mask selects) and zero rows elsewhere (Algorithm 2 line 19), or
        None without force encoding (ablation).
    sigma: the noise standard deviation in Å.
    """

    dens_structures: Tensor
    corrupted: Tensor
    noise: Tensor
    pos: Tensor
    force_input: Tensor | None
    sigma: float

    @property
    def noise_target(self) -> Tensor:
        """Denoising target eps / sigma, float [N, 3] (Eq. 4)."""
        return self.noise / self.sigma


def _require(data: Batch, names: tuple[str, ...]) -> None:
    missing = [name for name in names if getattr(data, name, None) is None]
    if missing:
        raise ValueError(f"batch lacks attribute(s) {missing} required by DeNS")


def _check_shape(name: str, tensor: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(tensor.shape)}")


def corrupt(
    data: Batch,
    settings: DeNSSettings,
    generator: torch.Generator,
    forces: Tensor | None = None,
    batch_generator: torch.Generator | None = None,
) -> Corruption:
    """Sample which structures and atoms DeNS corrupts, the noise and the force input.

    data: batch with ``pos`` [N, 3], ``batch`` [N], ``natoms`` [B], ``fixed`` bool [N] and
        ``md_split`` bool [B]; it is not modified.
    forces: force labels to encode, [N, 3], in the units ``settings.force_encoding_units``
        names (``force_encoding_input``); required when ``settings.force_encoding`` is True.
    generator: source of this process's draws; they happen on the generator's device (B
        uniforms, N uniforms, then N x 3 normals, whatever the settings, so two settings with
        one seed draw the same numbers), then move to ``data.pos.device``.
    batch_generator: with ``settings.decision == "batch"`` (required then, unused otherwise),
        one uniform from it, drawn first, decides for the whole batch (the B structure uniforms
        of ``generator`` are drawn and unused); seeded alike on every process, it makes every
        process take the same decision for its share of the global batch.
    """
    _require(data, ("pos", "batch", "natoms", "fixed", "md_split"))
    pos: Tensor = data.pos
    num_atoms = pos.shape[0]
    num_structures = data.natoms.numel()
    _check_shape("data.pos", pos, (num_atoms, 3))
    _check_shape("data.fixed", data.fixed, (num_atoms,))
    _check_shape("data.md_split", data.md_split, (num_structures,))
    if settings.force_encoding:
        if forces is None:
            raise ValueError("corrupt needs forces=[N, 3] labels when force_encoding is True")
        _check_shape("forces", forces, (num_atoms, 3))
    by_batch = settings.decision == "batch"
    if by_batch and batch_generator is None:
        raise ValueError('corrupt needs batch_generator with decision "batch"')

    batch_draw = None
    if by_batch:
        assert batch_generator is not None
        batch_draw = torch.rand((), generator=batch_generator, device=batch_generator.device)
    gen_device = generator.device
    structure_draw = torch.rand(num_structures, generator=generator, device=gen_device)
    atom_draw = torch.rand(num_atoms, generator=generator, device=gen_device)
    normal = torch.randn(num_atoms, 3, generator=generator, device=gen_device, dtype=pos.dtype)
    structure_draw = structure_draw.to(pos.device)
    atom_draw = atom_draw.to(pos.device)
    normal = normal.to(pos.device)

    md_split = data.md_split.to(pos.device, torch.bool)
    free = ~data.fixed.to(pos.device, torch.bool)
    if batch_draw is not None:
        dens_structures = (batch_draw.to(pos.device) < settings.p).expand(num_structures)
        selected = (dens_structures & ~md_split)[data.batch]
    else:
        dens_structures = (structure_draw < settings.p) & ~md_split
        selected = dens_structures[data.batch] & free
    if settings.partial_corruption:
        selected = selected & (atom_draw < settings.corruption_ratio)
    corrupted = selected & free
    noise = torch.where(corrupted.unsqueeze(-1), normal * settings.sigma, torch.zeros_like(normal))
    force_input = None
    if settings.force_encoding:
        assert forces is not None
        force_input = torch.where(selected.unsqueeze(-1), forces, torch.zeros_like(forces))
    return Corruption(
        dens_structures=dens_structures.clone(),
        corrupted=corrupted,
        noise=noise,
        pos=pos + noise,
        force_input=force_input,
        sigma=settings.sigma,
    )


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


KCAL_PER_MOL_PER_EV = units.mol / units.kcal
"""1 eV = 23.0605 kcal/mol (ASE's CODATA values)."""


def force_encoding_input(forces: Tensor, force_std: float, units: ForceEncodingUnits) -> Tensor:
    """Force labels f [N, 3] in eV/Å -> the forces the encoding receives (Eq. 5), in ``units``:
    f / force_std ("normalized", the engine's f' = f / sigma_F, ``Normalizer.force_scale``), f
    ("eV/Å") or f in kcal/mol/Å."""
    if units == "normalized":
        return forces / force_std
    if units == "eV/Å":
        return forces
    if units == "kcal/mol/Å":
        return forces * KCAL_PER_MOL_PER_EV
    raise ValueError(
        f"force_encoding_units must be one of {get_args(ForceEncodingUnits)}, got {units!r}"
    )


def per_atom_error(prediction: Tensor, target: Tensor, metric: ErrorMetric) -> Tensor:
    """Per-atom error of vectors [N, 3] -> [N] ("l2mae", "mse" or "mae", module notes)."""
    diff = prediction - target
    if metric == "l2mae":
        return torch.linalg.vector_norm(diff, dim=-1)
    if metric == "mse":
        return diff.square().sum(dim=-1)
    if metric == "mae":
        return diff.abs().mean(dim=-1)
    raise ValueError(f"metric must be one of {get_args(ErrorMetric)}, got {metric!r}")


def _per_structure_sum(values: Tensor, batch: Tensor, num_structures: int) -> Tensor:
    out = torch.zeros(num_structures, dtype=values.dtype, device=values.device)
    return out.index_add(0, batch, values)


def _mixed_loss(
    prediction: dict[str, Tensor],
    data: Batch,
    corruption: Corruption | None,
    energy_target: Tensor,
    force_target: Tensor,
    loss: LossSettings,
    energy_dropped: Tensor | None,
    hybrid: bool,
    coefficient: float,
    free_atoms_per_process: float | None,
) -> dict[str, Tensor]:
    """energy_dropped: bool [B], structures whose energy term is dropped (None: none).
    hybrid: a DeNS batch with partial corruption, whose free-atom mean (reduction "free_atoms")
    is this process's own, as the official hybrid loss's local torch.mean."""
    _require(data, ("batch", "natoms", "fixed"))
    coefficient = _check_real("coefficient", coefficient)
    if not (coefficient >= 0.0 and math.isfinite(coefficient)):
        raise ValueError(f"coefficient must be a finite number >= 0, got {coefficient!r}")
    for key in ("energy", "forces"):
        if key not in prediction:
            raise ValueError(f"prediction lacks {key!r}; it has {sorted(prediction)}")
    batch: Tensor = data.batch
    num_atoms = batch.numel()
    num_structures = data.natoms.numel()
    energy_pred = prediction["energy"]
    force_pred = prediction["forces"]
    _check_shape('prediction["energy"]', energy_pred, (num_structures,))
    _check_shape('prediction["forces"]', force_pred, (num_atoms, 3))
    _check_shape("energy_target", energy_target, (num_structures,))
    _check_shape("force_target", force_target, (num_atoms, 3))
    free = ~data.fixed.to(torch.bool)
    _check_shape("data.fixed", free, (num_atoms,))

    if corruption is None:
        corrupted = torch.zeros_like(free)
    else:
        corrupted = corruption.corrupted
        _check_shape("corruption.corrupted", corrupted, (num_atoms,))
        if bool((corrupted & ~free).any()):
            raise ValueError("corruption.corrupted marks fixed atoms; DeNS never corrupts them")
    num_corrupted = int(corrupted.sum())
    zero = energy_pred.new_zeros(())

    energy_error = (energy_pred - energy_target).abs()
    if energy_dropped is None:
        energy_kept = energy_error
    else:
        energy_kept = torch.where(energy_dropped, torch.zeros_like(energy_error), energy_error)
    energy = loss.energy_coefficient * energy_kept.sum() / num_structures

    force_atoms = free & ~corrupted
    force_error = per_atom_error(force_pred, force_target, loss.force_metric)
    force_error = torch.where(force_atoms, force_error, torch.zeros_like(force_error))

    if num_corrupted > 0 and coefficient > 0.0:
        assert corruption is not None
        if "noise" not in prediction:
            raise ValueError(
                f"prediction lacks 'noise' but {num_corrupted} atoms are corrupted; "
                "call the model with predict_noise=True"
            )
        noise_pred = prediction["noise"]
        _check_shape('prediction["noise"]', noise_pred, (num_atoms, 3))
        noise_error = per_atom_error(noise_pred, corruption.noise_target, loss.noise_metric)
        noise_error = torch.where(corrupted, noise_error, torch.zeros_like(noise_error))
    else:
        noise_error = None

    if loss.reduction == "structure":
        free_count = _per_structure_sum(free.to(force_error.dtype), batch, num_structures)
        free_count = free_count.clamp(min=1.0)
        force_per_structure = _per_structure_sum(force_error, batch, num_structures) / free_count
        forces = loss.force_coefficient * force_per_structure.sum() / num_structures
        if noise_error is None:
            dens_term = zero
        else:
            noise_per_structure = _per_structure_sum(noise_error, batch, num_structures)
            dens_term = coefficient * (noise_per_structure / free_count).sum() / num_structures
    elif loss.reduction == "atom":
        forces = loss.force_coefficient * force_error.sum() / max(int(force_atoms.sum()), 1)
        if noise_error is None:
            dens_term = zero
        else:
            dens_term = coefficient * noise_error.sum() / num_corrupted
    else:
        count = max(int(free.sum()), 1)
        if not hybrid and free_atoms_per_process is not None:
            count = free_atoms_per_process
        forces = loss.force_coefficient * force_error.sum() / count
        dens_term = zero if noise_error is None else coefficient * noise_error.sum() / count

    return {
        "total": energy + forces + dens_term,
        "energy": energy,
        "forces": forces,
        "dens": dens_term,
    }


def dens_loss(
    prediction: dict[str, Tensor],
    data: Batch,
    corruption: Corruption | None,
    energy_target: Tensor,
    force_target: Tensor,
    loss: LossSettings,
    dens: DeNSSettings,
    coefficient: float,
    free_atoms_per_process: float | None = None,
) -> dict[str, Tensor]:
    """Training loss of a mixed batch: Eq. 1 for original-task structures, Eq. 6 for DeNS ones.

    prediction: model output on the corrupted batch, ``"energy"`` [B], ``"forces"`` [N, 3]
        and ``"noise"`` [N, 3] (needed when an atom is corrupted and coefficient > 0).
    data: the batch (``batch`` [N], ``natoms`` [B], ``fixed`` [N]).
    corruption: the draw from ``corrupt``; None = no DeNS at all (Eq. 1 for every structure).
    energy_target: E' [B] (normalised, of the ORIGINAL structures). force_target: f' [N, 3].
    dens: supplies ``energy_loss`` (Eq. 6 energy term kept or dropped), ``decision`` and
        ``partial_corruption`` (which reduction "free_atoms" applies, module notes).
    coefficient: lambda_DeNS for this epoch (``dens_coefficient``).
    free_atoms_per_process: reduction "free_atoms" with several processes: the mean number of
        free atoms per process in the global batch, the denominator of fairchem's DDPLoss mean
        (the free atoms of the global batch / world size), used except for a hybrid batch (a
        DeNS batch with partial corruption: each process's own free-atom mean, as the official
        hybrid loss); None = this batch's own count (one process).

    Per structure j with free-atom count |S_j| and corruption mask m (Algorithm 2):
        L_j = [kept] lambda_E |E'_j - E_hat_j|
              + lambda_F / |S_j| sum_{free i in j} (1 - m_i) err_F(f_hat_i, f'_i)
              + lambda_DeNS / |S_j| sum_{i in j} m_i err_eps(eps_hat_i, eps_i / sigma),
    and the loss is sum_j L_j / B (``reduction="atom"`` and ``"free_atoms"``: see the module
    notes). When ``dens.energy_loss`` is False the energy term is dropped for structures with a
    corrupted atom (decision "structure") or for every structure of a DeNS batch ("batch").

    Returns 0-dim tensors ``"energy"``, ``"forces"``, ``"dens"`` (each term's weighted share,
    already divided by B) and ``"total"`` = their sum, the tensor to back-propagate.
    """
    dropped = None
    hybrid = False
    if corruption is not None:
        _check_shape(
            "corruption.dens_structures", corruption.dens_structures, (data.natoms.numel(),)
        )
        hybrid = dens.partial_corruption and bool(corruption.dens_structures.any())
        if not dens.energy_loss and dens.decision == "batch":
            dropped = corruption.dens_structures
        elif not dens.energy_loss:
            corrupted = corruption.corrupted.to(torch.float64)
            dropped = _per_structure_sum(corrupted, data.batch, data.natoms.numel()) > 0
    return _mixed_loss(
        prediction,
        data,
        corruption,
        energy_target,
        force_target,
        loss,
        dropped,
        hybrid,
        coefficient,
        free_atoms_per_process,
    )


def original_task_loss(
    prediction: dict[str, Tensor],
    data: Batch,
    energy_target: Tensor,
    force_target: Tensor,
    loss: LossSettings,
    free_atoms_per_process: float | None = None,
) -> dict[str, Tensor]:
    """Eq. 1 for every structure of the batch: ``dens_loss`` without corruption.

    Shapes, ``free_atoms_per_process`` and the returned terms are those of ``dens_loss``;
    ``"dens"`` is 0.
    """
    return _mixed_loss(
        prediction,
        data,
        None,
        energy_target,
        force_target,
        loss,
        None,
        False,
        0.0,
        free_atoms_per_process,
    )
