"""A small but real force field that satisfies the dens model interface, plus toy data for tests.

`ToyForceField` is an invariant pair potential with learned radial functions:

    E = sum_i e_{z_i} + sum_{i<j, same structure} phi(x_ij) * c(d_ij)          [B]
    x_ij = [rbf(d_ij), h_i + h_j, (f_i - f_j) . r_ij / d_ij]
    h_i = emb(z_i) + w ||f_i||                        (force encoding, L=0 part of Eq. 5)
    forces = -dE/dpos (gradient_forces) or sum_j g(x_ij) c(d_ij) r_ij / d_ij (direct)   [N,3]
    noise_i = sum_j n(x_ij) c(d_ij) (r_i - r_j) / d_ij + a_{z_i} f_i                 [N,3]

with r_ij = pos_j - pos_i, d_ij = |r_ij|, c a cosine cutoff and f the (normalised) force input.
It is rotation-invariant (energy) / equivariant (forces, noise), has a force-encoding term that
is linear in f and a separate noise head, and learns EMT labels within a few epochs. All pairs
inside a structure are used (structures here are small clusters), so no neighbour list is needed.
"""

from __future__ import annotations

import math
from pathlib import Path

import ase
import ase.build
import numpy as np
import torch
from ase.calculators.emt import EMT
from torch import Tensor, nn

from dens.data.batch import Batch, Data
from dens.data.structures import atoms_to_data


class ToyForceField(nn.Module):
    """Invariant pair potential with an optional force encoding and noise head.

    Args:
        num_elements: size of the atomic-number embedding (max Z + 1).
        num_rbf: number of Gaussian radial basis functions on [0, cutoff].
        hidden: width of the element embedding and of the pair MLPs.
        cutoff: pair cutoff radius in Å.
        gradient_forces: forces as -dE/dpos (True) or from a direct equivariant head (False).
        force_encoding: accept a `force_input` [N,3] (DeNS, Alg. 1).
        noise_head: build the head that predicts eps/sigma (DeNS, Eq. 6).
    """

    def __init__(
        self,
        num_elements: int = 100,
        num_rbf: int = 16,
        hidden: int = 32,
        cutoff: float = 6.0,
        gradient_forces: bool = True,
        force_encoding: bool = False,
        noise_head: bool = False,
    ) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.gradient_forces = gradient_forces
        self.force_encoding = force_encoding
        self.register_buffer("rbf_centers", torch.linspace(0.0, cutoff, num_rbf))
        self.rbf_width = cutoff / num_rbf
        self.element_energy = nn.Embedding(num_elements, 1)
        nn.init.zeros_(self.element_energy.weight)
        self.embedding = nn.Embedding(num_elements, hidden)
        pair_in = num_rbf + hidden + (1 if force_encoding else 0)
        self.pair_energy = _mlp(pair_in, hidden)
        self.force_norm_weight = nn.Parameter(torch.zeros(hidden)) if force_encoding else None
        self.pair_force = None if gradient_forces else _mlp(pair_in, hidden)
        self.pair_noise = _mlp(pair_in, hidden) if noise_head else None
        self.noise_force_weight = (
            nn.Embedding(num_elements, 1) if (noise_head and force_encoding) else None
        )

    def forward(
        self, data: Batch, force_input: Tensor | None = None, predict_noise: bool = False
    ) -> dict[str, Tensor]:
        """data.pos [N,3], atomic_numbers [N], batch [N], natoms [B] -> energy [B], forces [N,3]
        (and noise [N,3] when predict_noise)."""
        if force_input is not None and not self.force_encoding:
            raise ValueError("ToyForceField was built without force_encoding but got force_input")
        if predict_noise and self.pair_noise is None:
            raise ValueError("ToyForceField was built without a noise head but predict_noise=True")
        with torch.enable_grad():
            pos = data.pos
            if self.gradient_forces and not pos.requires_grad:
                pos = pos.detach().requires_grad_(True)
            num_structures = int(data.natoms.numel())
            z, batch = data.atomic_numbers, data.batch
            same = batch[:, None] == batch[None, :]
            i, j = torch.triu(same, diagonal=1).nonzero(as_tuple=True)
            vec = pos[j] - pos[i]  # [P,3]
            dist = vec.norm(dim=-1)  # [P]
            unit = vec / dist[:, None]
            envelope = 0.5 * (torch.cos(math.pi * dist / self.cutoff) + 1.0)
            envelope = envelope * (dist < self.cutoff)
            rbf = torch.exp(-(((dist[:, None] - self.rbf_centers) / self.rbf_width) ** 2))
            h = self.embedding(z)  # [N,H]
            features = [rbf]
            if self.force_encoding:
                f = force_input if force_input is not None else torch.zeros_like(pos)
                h = h + f.norm(dim=-1, keepdim=True) * self.force_norm_weight
                features.append(((f[i] - f[j]) * unit).sum(-1, keepdim=True))
            features.insert(1, h[i] + h[j])
            x = torch.cat(features, dim=-1)  # [P, pair_in]
            pair_e = self.pair_energy(x).squeeze(-1) * envelope  # [P]
            energy = torch.zeros(num_structures, dtype=pos.dtype, device=pos.device)
            energy = energy.index_add(0, batch, self.element_energy(z).squeeze(-1))
            energy = energy.index_add(0, batch[i], pair_e)
            if self.gradient_forces:
                (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=self.training)
                forces = -grad
            else:
                forces = _pair_vectors(self.pair_force(x).squeeze(-1) * envelope, unit, i, j, pos)
        out = {"energy": energy, "forces": forces}
        if predict_noise:
            noise = _pair_vectors(self.pair_noise(x).squeeze(-1) * envelope, unit, i, j, pos)
            if self.noise_force_weight is not None and force_input is not None:
                noise = noise + self.noise_force_weight(z) * force_input
            out["noise"] = noise
        return out


def _mlp(n_in: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, 1))


def _pair_vectors(weight: Tensor, unit: Tensor, i: Tensor, j: Tensor, pos: Tensor) -> Tensor:
    """Per-atom vectors sum_j w_ij (r_i - r_j)/d_ij from pair weights w [P] -> [N,3]."""
    out = torch.zeros_like(pos)
    out = out.index_add(0, i, -weight[:, None] * unit)
    return out.index_add(0, j, weight[:, None] * unit)


def build_toy_model(experiment: dict) -> ToyForceField:
    """The model registry's contract: a full experiment dict -> nn.Module. The noise head exists
    only when DeNS is on; force encoding only when DeNS is on and dens.force_encoding is true."""
    dens = experiment.get("dens")
    return ToyForceField(
        **experiment["model"].get("hyperparameters", {}),
        force_encoding=bool(dens and dens["force_encoding"]),
        noise_head=dens is not None,
    )


def make_emt_dataset(n: int, seed: int) -> list[Data]:
    """`n` rattled 6-8 atom Cu/Au clusters (fcc fragments) labelled with ASE's EMT, as model
    input with labels (dens.data.structures.atoms_to_data)."""
    rng = np.random.default_rng(seed)
    base = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    out = []
    for _ in range(n):
        keep = np.sort(rng.permutation(len(base))[: rng.integers(6, len(base) + 1)])
        atoms = ase.Atoms(
            symbols=rng.choice(["Cu", "Au"], size=len(keep), p=[0.7, 0.3]),
            positions=base.positions[keep] + rng.normal(0.0, 0.12, size=(len(keep), 3)),
        )
        atoms.calc = EMT()
        atoms.get_forces()
        out.append(atoms_to_data(atoms, labels=True))
    return out


def toy_experiment(dens: bool = True, **optim: object) -> dict:
    """A resolved experiment dict (the shape the config layer produces) for the toy model."""
    return {
        "name": "toy/pair" + ("-dens" if dens else ""),
        "scale": "smoke",
        "dataset": "toy-emt",
        "seed": 0,
        "model": {"family": "toy", "preset": "small", "hyperparameters": {"hidden": 16}},
        "optim": {
            "optimizer": "adamw",
            "lr": 5e-3,
            "min_lr": 1e-5,
            "lr_schedule": "cosine",
            "warmup_epochs": 1,
            "epochs": 4,
            "batch_size": 4,
            "eval_batch_size": 8,
            "weight_decay": 1e-6,
            "grad_clip_norm": 100.0,
            "ema_decay": 0.9,
            "energy_coefficient": 1,
            "force_coefficient": 10,
            "energy_loss": "mae",
            "force_loss": "mae",
        }
        | optim,
        "dens": (
            {
                "p": 0.5,
                "sigma": 0.05,
                "corruption_ratio": 0.5,
                "coefficient": 5,
                "force_encoding": True,
                "energy_loss": True,
                "partial_corruption": True,
                "coefficient_decay": "linear",
            }
            if dens
            else None
        ),
    }


def train_toy_run(run_dir: Path, experiment: dict, n_structures: int, seed: int) -> list[Data]:
    """Train the toy model on EMT structures (32 train, 8 validation) into ``run_dir``; return
    the remaining ``n_structures - 40`` structures as a test set."""
    from dens.train import train

    structures = make_emt_dataset(n_structures, seed=seed)
    train(experiment, structures[:32], structures[32:40], run_dir, build_toy_model, progress=False)
    return structures[40:]
