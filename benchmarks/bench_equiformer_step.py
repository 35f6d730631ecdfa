"""Time one Equiformer training step (forward, gradient forces, backward) on CPU.

Batch: 8 aspirin conformers (21 atoms; RDKit ETKDG geometries, fixed seed), float32, 2 torch
threads. Presets ``l2`` (paper Lmax=2 size) and ``shrunk`` (2 blocks, 32x0e+16x1e+8x2e), each
without and with DeNS (force input on 25% of the atoms, noise prediction). Prints the median
step time of each and the ratio DeNS / plain.

Anchor (official Equiformer code run on the same kind of machine, benchmarks/README.md): 10-12 s
per step at the paper size, 0.74 s for the shrunken configuration.

    python benchmarks/bench_equiformer_step.py [--steps 5] [--presets l2 shrunk]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rdkit import Chem
from rdkit.Chem import AllChem

from dens.data.batch import Batch, Data
from dens.models.equiformer import Equiformer, EquiformerSettings
from dens.pipeline.registry import load_registry

ASPIRIN_SMILES = "CC(=O)OC1=CC=CC=C1C(=O)O"


def aspirin_batch(num_conformers: int = 8, seed: int = 0) -> Batch:
    """``num_conformers`` aspirin geometries (ETKDG + MMFF) as a PyG Batch with random
    labels (energy [B], forces [N, 3])."""
    mol = Chem.AddHs(Chem.MolFromSmiles(ASPIRIN_SMILES))
    conf_ids = AllChem.EmbedMultipleConfs(mol, numConfs=num_conformers, randomSeed=seed)
    if len(conf_ids) != num_conformers:
        raise RuntimeError(f"RDKit embedded {len(conf_ids)} of {num_conformers} conformers")
    AllChem.MMFFOptimizeMoleculeConfs(mol, maxIters=200)
    z = torch.tensor([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    data = []
    for cid in conf_ids:
        pos = torch.tensor(mol.GetConformer(cid).GetPositions(), dtype=torch.float32)
        pos = pos + 0.05 * torch.randn(pos.shape, generator=gen)  # non-equilibrium
        n = pos.shape[0]
        data.append(
            Data(
                pos=pos,
                atomic_numbers=z,
                natoms=torch.tensor([n]),
                energy=torch.randn(1, generator=gen),
                forces=torch.randn(n, 3, generator=gen),
                fixed=torch.zeros(n, dtype=torch.bool),
            )
        )
    return Batch.from_data_list(data)


def training_step(
    model: Equiformer, batch: Batch, force_input: torch.Tensor | None, noise: torch.Tensor | None
) -> None:
    """Forward, gradient forces (create_graph), loss, backward."""
    model.zero_grad(set_to_none=True)
    out = model(batch, force_input=force_input, predict_noise=noise is not None)
    loss = (out["energy"] - batch.energy).abs().mean()
    loss = loss + 80.0 * (out["forces"] - batch.forces).norm(dim=-1).mean()
    if noise is not None:
        loss = loss + 5.0 * (out["noise"] - noise).pow(2).sum(-1).mean()
    loss.backward()


def time_steps(model: Equiformer, batch: Batch, dens: bool, steps: int) -> tuple[float, float]:
    """Median wall time and median process CPU time (all threads) of ``steps`` training
    steps, after one warm-up step."""
    force_input = noise = None
    if dens:
        gen = torch.Generator().manual_seed(1)
        mask = torch.rand(batch.num_nodes, generator=gen) < 0.25
        force_input = batch.forces * mask.unsqueeze(-1)
        noise = torch.randn(batch.num_nodes, 3, generator=gen)
    model.train()
    training_step(model, batch, force_input, noise)
    wall, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        training_step(model, batch, force_input, noise)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--presets", nargs="+", default=["l2", "shrunk"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch = aspirin_batch()
    print(
        f"batch: {batch.num_graphs} x {batch.num_nodes // batch.num_graphs} atoms, "
        f"{args.threads} threads, float32, median of {args.steps} steps"
    )
    for preset in args.presets:
        times = {}
        for dens in (False, True):
            preset_kwargs = load_registry({"scale": "paper"}).preset("equiformer", preset)
            settings = EquiformerSettings(**preset_kwargs, force_encoding=dens, noise_head=dens)
            model = Equiformer(settings)
            n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
            times[dens], cpu = time_steps(model, batch, dens, args.steps)
            label = "dens " if dens else "plain"
            print(
                f"{preset:>7} {label} params {n_params:>9,d}  step {times[dens]:.3f} s wall "
                f"({cpu:.3f} s CPU)"
            )
        print(f"{preset:>7} DeNS/plain step time ratio {times[True] / times[False]:.2f}")


if __name__ == "__main__":
    main()
