"""DeNS corruption (dens.denoising): which structures and atoms are corrupted, the position
noise (Algorithm 2 lines 5-22) and the forces the encoding receives (Eq. 5)."""

from dataclasses import dataclass
from typing import get_args

import torch
from ase import units
from torch import Tensor

from dens.data.batch import Batch
from dens.denoising.checks import _check_shape, _require
from dens.denoising.settings import DeNSSettings, ForceEncodingUnits


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


def _check_corrupt_inputs(
    data: Batch,
    settings: DeNSSettings,
    forces: Tensor | None,
    batch_generator: torch.Generator | None,
) -> int:
    """The number of structures B of ``data``, after checking ``corrupt``'s arguments."""
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
    if settings.decision == "batch" and batch_generator is None:
        raise ValueError('corrupt needs batch_generator with decision "batch"')
    return num_structures


def _draw(
    pos: Tensor,
    num_structures: int,
    generator: torch.Generator,
    batch_generator: torch.Generator | None,
) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
    """The batch uniform (from ``batch_generator``, first; None without it), then the B
    structure uniforms, N atom uniforms and N x 3 normals of ``generator``, on ``pos``'s
    device."""
    num_atoms = pos.shape[0]
    batch_draw = None
    if batch_generator is not None:
        batch_draw = torch.rand((), generator=batch_generator, device=batch_generator.device)
    gen_device = generator.device
    structure_draw = torch.rand(num_structures, generator=generator, device=gen_device)
    atom_draw = torch.rand(num_atoms, generator=generator, device=gen_device)
    normal = torch.randn(num_atoms, 3, generator=generator, device=gen_device, dtype=pos.dtype)
    structure_draw = structure_draw.to(pos.device)
    atom_draw = atom_draw.to(pos.device)
    normal = normal.to(pos.device)
    return batch_draw, structure_draw, atom_draw, normal


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
    num_structures = _check_corrupt_inputs(data, settings, forces, batch_generator)
    pos: Tensor = data.pos
    by_batch = settings.decision == "batch"
    batch_draw, structure_draw, atom_draw, normal = _draw(
        pos, num_structures, generator, batch_generator if by_batch else None
    )

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
