"""Relaxed systems per second: the batched L-BFGS (dens.relaxation) at batch sizes 1, 8 and 32
beside ASE's LBFGS driven by our ASE calculator (dens.calculator), same systems, same settings
(OC20's: maxstep 0.04 Å, memory 50, damping 1, alpha 70, fmax 0.02 eV/Å; --max-steps), CPU.

The systems are the in-domain and held-out-adsorbate initial structures of a relax split (default
mini-OC20's is2re_test: elements the run was trained on), repeated with a 0.05 Å rattle of the
free atoms (seeded) until there are --systems of them. The model is a trained run (default the
mini EquiformerV2 + DeNS run of Table 2). Reports wall and CPU time (process time: on a shared
machine, CPU seconds compare better than wall seconds) and the largest relaxed-energy difference
between the batched runs and ASE, over all systems and over those converged in both.

    python benchmarks/bench_relax.py --systems 32 --max-steps 200 --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from dens.calculator import DeNSCalculator
from dens.inference import load_trained_model
from dens.pipeline.challenges import IS2RE_CHALLENGES
from dens.pipeline.is2re import read_initial_structures
from dens.relaxation.driver import System, relax_systems
from dens.relaxation.lbfgs import LBFGSSettings

RUN = Path("results/mini/runs/oc20-all-md/eqv2-dens-160m/seed0")
SPLIT = Path("results/mini/data/oc20-all-md/is2re_test")  # a split folder


def systems(split: Path, run: Path, count: int, seed: int = 0) -> list[System]:
    """``count`` systems: the split's systems with only trained elements, then rattled copies."""
    trained = load_trained_model(run)
    rows = [
        s
        for s in read_initial_structures(
            split, IS2RE_CHALLENGES["oc20"], None, trained.normalizer.elements
        )
        if not s.unseen
    ]
    rng = np.random.default_rng(seed)
    out = []
    for index in range(count):
        base = rows[index % len(rows)].system
        start = base.start().clone()
        if index >= len(rows):
            free = ~base.data.fixed
            start[free] += torch.from_numpy(rng.normal(0.0, 0.05, size=(int(free.sum()), 3)))
        data = base.data.clone()
        data.pos = start.to(data.pos.dtype)
        out.append(System(f"{index}", data, start))
    return out


def relax_with_ase(
    run: Path, structures: list[System], settings: LBFGSSettings
) -> list[tuple[float, bool]]:
    """Relaxed energy and convergence of each system with ASE's LBFGS and DeNSCalculator."""
    import ase
    from ase.constraints import FixAtoms
    from ase.optimize import LBFGS

    calculator = DeNSCalculator(run, min_distance=0.0)  # the batched relaxation checks none
    out = []
    for system in structures:
        data = system.data
        atoms = ase.Atoms(
            numbers=data.atomic_numbers.numpy(),
            positions=system.start().numpy(),
            cell=data.cell[0].double().numpy(),
            pbc=True,
            tags=data.tags.numpy(),
        )
        atoms.set_constraint(FixAtoms(mask=data.fixed.numpy()))
        atoms.calc = calculator
        optimizer = LBFGS(
            atoms,
            maxstep=settings.maxstep,
            memory=settings.memory,
            damping=settings.damping,
            alpha=settings.alpha,
            logfile=None,
        )
        converged = optimizer.run(fmax=settings.fmax, steps=settings.max_steps)
        out.append((atoms.get_potential_energy(), bool(converged)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=RUN)
    parser.add_argument("--split", type=Path, default=SPLIT)
    parser.add_argument("--systems", type=int, default=32)
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = LBFGSSettings(max_steps=args.max_steps)
    structures = systems(args.split, args.run, args.systems)
    trained = load_trained_model(args.run)
    natoms = sum(int(s.data.natoms) for s in structures)
    print(f"{len(structures)} systems ({natoms} atoms), {args.threads} thread(s), {settings}")

    start, cpu = time.perf_counter(), time.process_time()
    reference = relax_with_ase(args.run, structures, settings)
    ase_s, ase_cpu = time.perf_counter() - start, time.process_time() - cpu
    results = {
        "ase": {
            "wall_s": ase_s,
            "cpu_s": ase_cpu,
            "systems_per_s": len(structures) / ase_s,
            "systems_per_cpu_s": len(structures) / ase_cpu,
        }
    }
    print(
        f"ASE LBFGS + DeNSCalculator: {ase_s:.1f} s ({ase_cpu:.1f} CPU s), "
        f"{len(structures) / ase_s:.3f} systems/s, {len(structures) / ase_cpu:.3f} per CPU s"
    )
    for batch_size in args.batch_sizes:
        batches: list[int] = []  # systems per model call

        def predict(batch, batches=batches):
            batches.append(int(batch.natoms.numel()))
            return trained.predict(batch)

        start, cpu = time.perf_counter(), time.process_time()
        relaxed = {r.key: r for r in relax_systems(structures, predict, settings, batch_size)}
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        energies = np.array([relaxed[s.key].energy for s in structures])
        differences = np.abs(energies - np.array([e for e, _ in reference]))
        both = np.array(
            [
                relaxed[s.key].converged and c
                for s, (_, c) in zip(structures, reference, strict=True)
            ]
        )
        difference = float(differences.max())
        converged_difference = float(differences[both].max()) if both.any() else None
        steps = np.array([relaxed[s.key].steps for s in structures])
        converged = np.mean([relaxed[s.key].converged for s in structures])
        results[f"batch{batch_size}"] = {
            "wall_s": wall,
            "cpu_s": cpu,
            "systems_per_s": len(structures) / wall,
            "systems_per_cpu_s": len(structures) / cpu,
            "model_calls": len(batches),
            "mean_steps": float(steps.mean()),
            "converged_fraction": float(converged),
            "max_abs_energy_difference_vs_ase_meV": 1000 * difference,
            "max_abs_energy_difference_vs_ase_both_converged_meV": (
                None if converged_difference is None else 1000 * converged_difference
            ),
            "both_converged": int(both.sum()),
        }
        print(
            f"batched L-BFGS, batch {batch_size:>2}: {wall:.1f} s ({cpu:.1f} CPU s), "
            f"{len(structures) / wall:.3f} systems/s, {len(structures) / cpu:.3f} per CPU s "
            f"({ase_cpu / cpu:.2f}x ASE per CPU s), "
            f"{len(batches)} model calls, mean {steps.mean():.0f} steps, "
            f"{100 * converged:.0f}% converged, max |E - E_ASE| {1000 * difference:.3f} meV "
            f"(systems converged in both, {int(both.sum())}: "
            f"{1000 * (converged_difference or 0.0):.3f} meV)"
        )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
