"""Batched L-BFGS: one limited-memory BFGS per system, many periodic systems stepped at once.

The update of each system is ASE's ``ase.optimize.LBFGS`` without line search (Nocedal's
two-loop recursion with a constant initial inverse Hessian ``H0 = I / alpha``), which is also
what fairchem 1.x batches for its ML relaxations (``fairchem/core/common/relaxation/optimizers/
lbfgs_torch.py``, ``LBFGS.step``):

    s_k = r_k - r_{k-1},  y_k = -(f_k - f_{k-1}),  rho_k = 1 / <y_k, s_k>       (per system)
    q = -f_k;  for i = k .. k-m+1:  a_i = rho_i <s_i, q>,  q -= a_i y_i
    z = q / alpha;  for i = k-m+1 .. k:  b_i = rho_i <y_i, z>,  z += s_i (a_i - b_i)
    dr = -z, scaled so that no atom of the system moves more than ``maxstep``, times ``damping``

with ``<.,.>`` the dot product over all atoms of one system and ``m`` = min(k, ``memory``).
Fixed atoms (FixAtoms, ``fixed``) get zero force, so zero ``s``, ``y`` and step: they never move.
States are float64 (fairchem casts forces and positions to float64 "otherwise the algorithm is
prone to overflow"); the model sees float32 positions.

Storage: atoms of the systems in the batch are packed ([N, 3], system index ``batch`` [N]) as
in a dens.data.batch.Batch; the history is a ring buffer ``[memory, N, 3]`` shared by the batch
with one write position, and per system the number of valid entries (the newest ``count[b]``
slots). Systems leave (:meth:`BatchedLBFGS.remove`) and enter (:meth:`BatchedLBFGS.add`) between
steps; the packed tensors are compacted or extended along the atom axis, and a new system starts
with an empty history, exactly as a fresh ASE optimiser would.

Step limit (``determine_step``): ASE scales the whole step when the longest atom step is at
least ``maxstep``; fairchem multiplies by ``min(longest, maxstep) / (longest + 1e-7)`` (the same
up to the 1e-7 guard). ASE's form is used so that a single system reproduces ASE's LBFGS.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dens.setting_fields import check_fields, setting


@dataclass(frozen=True)
class LBFGSSettings:
    """OC20's relaxation settings (defaults): at most ``max_steps`` steps, converged when the
    largest force on a free atom is below ``fmax`` (eV/Å); the L-BFGS parameters ``maxstep``
    (Å), ``memory``, ``damping`` and ``alpha`` (eV/Å², H0 = 1/alpha).

    Sources: the official DeNS OC20 configs (configs/oc20/2M/equiformer_v2/
    equiformer_dens_v2_N@12_L@6_M@2_lr@2e-4_epochs@12_std@0.1_gpus@16.yml, ``task``:
    relaxation_steps 200, relax_opt maxstep 0.04, memory 50, damping 1.0, alpha 70.0) and
    fairchem 1.x (``OCPTrainer.run_relaxations``: relaxation_fmax 0.02; TRAIN.md's relax_opt).
    """

    max_steps: int = setting(200, minimum=0)
    fmax: float = setting(0.02, exclusiveMinimum=0)
    maxstep: float = setting(0.04, exclusiveMinimum=0, maximum=1.0)  # ASE refuses more than 1 Å
    memory: int = setting(50, minimum=1)
    damping: float = setting(1.0, exclusiveMinimum=0)
    alpha: float = setting(70.0, exclusiveMinimum=0)

    def __post_init__(self) -> None:
        check_fields(self, "relax")


def per_system_sum(values: Tensor, batch: Tensor, num_systems: int) -> Tensor:
    """Sum of ``values`` [N] over the atoms of each system -> [B]."""
    return values.new_zeros(num_systems).index_add_(0, batch, values)


def per_system_max(values: Tensor, batch: Tensor, num_systems: int) -> Tensor:
    """Maximum of ``values`` [N] (non-negative) over the atoms of each system -> [B]."""
    out = values.new_zeros(num_systems)
    return out.scatter_reduce_(0, batch, values, reduce="amax", include_self=True)


def max_force(forces: Tensor, fixed: Tensor, batch: Tensor, num_systems: int) -> Tensor:
    """Largest force norm on a free atom of each system [B] (fixed atoms count as zero force,
    as ASE's FixAtoms and fairchem's ``get_max_forces(apply_constraint=True)`` do)."""
    norms = torch.linalg.vector_norm(forces, dim=1).masked_fill(fixed, 0.0)
    return per_system_max(norms, batch, num_systems)


class BatchedLBFGS:
    """The L-BFGS state of the systems in a batch (module notes); float64 on ``device``.

    positions [N, 3], fixed [N], batch [N] (system of each atom, 0..B-1), steps [B] (steps
    taken by each system). Call :meth:`step` with the forces at ``positions``; :meth:`add` and
    :meth:`remove` systems between steps.
    """

    def __init__(self, settings: LBFGSSettings, device: str | torch.device = "cpu") -> None:
        self.settings = settings
        self.device = torch.device(device)
        f64 = {"dtype": torch.float64, "device": self.device}
        m = settings.memory
        self.positions = torch.zeros(0, 3, **f64)
        self.fixed = torch.zeros(0, dtype=torch.bool, device=self.device)
        self.batch = torch.zeros(0, dtype=torch.long, device=self.device)
        self.natoms = torch.zeros(0, dtype=torch.long, device=self.device)
        self.steps = torch.zeros(0, dtype=torch.long, device=self.device)
        self.count = torch.zeros(0, dtype=torch.long, device=self.device)  # valid history
        self.previous_positions = torch.zeros(0, 3, **f64)
        self.previous_forces = torch.zeros(0, 3, **f64)
        self.s = torch.zeros(m, 0, 3, **f64)
        self.y = torch.zeros(m, 0, 3, **f64)
        self.rho = torch.zeros(m, 0, **f64)
        self.head = 0  # ring-buffer slot the next history entry goes to

    @property
    def num_systems(self) -> int:
        return int(self.natoms.numel())

    def add(self, positions: list[Tensor], fixed: list[Tensor]) -> None:
        """Systems enter at the end of the batch: positions [n_i, 3] (Å) and fixed [n_i] each,
        with an empty history and zero steps."""
        if len(positions) != len(fixed):
            raise ValueError(f"add: {len(positions)} position arrays but {len(fixed)} fixed masks")
        if not positions:
            return
        for i, (pos, mask) in enumerate(zip(positions, fixed, strict=True)):
            if pos.ndim != 2 or pos.shape[1] != 3 or mask.shape != (pos.shape[0],):
                raise ValueError(
                    f"add: system {i}: positions {tuple(pos.shape)} and fixed "
                    f"{tuple(mask.shape)}; expected [n, 3] and [n]"
                )
            if not torch.isfinite(pos).all():
                raise ValueError(f"add: system {i}: positions are not finite")
        pos = torch.cat(positions).to(self.device, torch.float64)
        mask = torch.cat(fixed).to(self.device, torch.bool)
        natoms = torch.tensor([len(p) for p in positions], device=self.device)
        systems = torch.arange(len(positions), device=self.device) + self.num_systems
        new_batch = torch.repeat_interleave(systems, natoms)
        n = pos.shape[0]
        zeros3 = pos.new_zeros(n, 3)
        self.positions = torch.cat([self.positions, pos])
        self.fixed = torch.cat([self.fixed, mask])
        self.batch = torch.cat([self.batch, new_batch])
        self.natoms = torch.cat([self.natoms, natoms])
        zeros_b = torch.zeros(len(positions), dtype=torch.long, device=self.device)
        self.steps = torch.cat([self.steps, zeros_b])
        self.count = torch.cat([self.count, zeros_b])
        self.previous_positions = torch.cat([self.previous_positions, zeros3])
        self.previous_forces = torch.cat([self.previous_forces, zeros3])
        m = self.settings.memory
        self.s = torch.cat([self.s, pos.new_zeros(m, n, 3)], dim=1)
        self.y = torch.cat([self.y, pos.new_zeros(m, n, 3)], dim=1)
        self.rho = torch.cat([self.rho, pos.new_zeros(m, len(positions))], dim=1)

    def remove(self, leaving: Tensor) -> None:
        """Systems with ``leaving`` [B] True leave the batch; the others keep their order,
        history and step counts."""
        keep = ~leaving.to(self.device, torch.bool)
        if keep.all():
            return
        atoms = keep[self.batch]
        new_index = torch.cumsum(keep, 0) - 1
        self.positions = self.positions[atoms]
        self.fixed = self.fixed[atoms]
        self.batch = new_index[self.batch[atoms]]
        self.natoms = self.natoms[keep]
        self.steps = self.steps[keep]
        self.count = self.count[keep]
        self.previous_positions = self.previous_positions[atoms]
        self.previous_forces = self.previous_forces[atoms]
        self.s = self.s[:, atoms]
        self.y = self.y[:, atoms]
        self.rho = self.rho[:, keep]

    def max_force(self, forces: Tensor) -> Tensor:
        """Largest force on a free atom of each system [B] (eV/Å)."""
        return max_force(forces.to(torch.float64), self.fixed, self.batch, self.num_systems)

    def _dot(self, a: Tensor, b: Tensor) -> Tensor:
        return per_system_sum((a * b).sum(dim=1), self.batch, self.num_systems)

    def step(self, forces: Tensor) -> None:
        """One L-BFGS step of every system in the batch from ``forces`` [N, 3] (eV/Å) at
        ``positions`` (module notes); fixed atoms' forces are ignored."""
        if forces.shape != self.positions.shape:
            raise ValueError(
                f"step: forces {tuple(forces.shape)} for positions {tuple(self.positions.shape)}"
            )
        settings, b = self.settings, self.num_systems
        if b == 0:
            return
        f = forces.to(self.device, torch.float64).masked_fill(self.fixed[:, None], 0.0)
        r = self.positions
        # history update for systems that have stepped before (ASE LBFGS.update)
        started = self.steps > 0
        s_new = (r - self.previous_positions) * started[self.batch, None]
        y_new = -(f - self.previous_forces) * started[self.batch, None]
        rho_new = torch.where(started, 1.0 / self._dot(y_new, s_new), r.new_zeros(b))
        self.s[self.head] = s_new
        self.y[self.head] = y_new
        self.rho[self.head] = rho_new
        self.count = torch.where(
            started, torch.clamp(self.count + 1, max=settings.memory), self.count
        )
        self.head = (self.head + 1) % settings.memory

        # two-loop recursion, newest entry first; entry j (age) is valid where j < count
        depth = int(self.count.max())
        slots = [(self.head - 1 - j) % settings.memory for j in range(depth)]
        q = -f
        a = r.new_zeros(depth, b)
        for j, slot in enumerate(slots):
            valid = j < self.count
            a[j] = torch.where(valid, self.rho[slot] * self._dot(self.s[slot], q), 0.0)
            q = q - a[j][self.batch, None] * self.y[slot]
        z = q * (1.0 / settings.alpha)  # H0 q, H0 = I / alpha as ASE builds it
        for j in reversed(range(depth)):
            slot = slots[j]
            valid = j < self.count
            beta = torch.where(valid, self.rho[slot] * self._dot(self.y[slot], z), 0.0)
            z = z + self.s[slot] * (a[j] - beta)[self.batch, None]
        dr = -z

        # step limit (ASE LBFGS.determine_step) and damping
        longest = per_system_max(torch.linalg.vector_norm(dr, dim=1), self.batch, b)
        scale = torch.where(
            longest >= settings.maxstep, settings.maxstep / longest, torch.ones_like(longest)
        )
        dr = dr * (scale * settings.damping)[self.batch, None]
        dr = dr.masked_fill(self.fixed[:, None], 0.0)
        self.previous_positions = r
        self.previous_forces = f
        self.positions = r + dr
        self.steps = self.steps + 1
