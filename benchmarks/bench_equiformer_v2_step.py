"""Time one EquiformerV2 training step, fairchem 1.x reference vs ours, without and with DeNS.

A step is forward + backward of the training loss, after ``zero_grad`` (no optimizer update):
energy MAE + force L2MAE (coefficients 2 and 100, the official OC20 DeNS config), and with DeNS
the denoising forward of the DeNS trainer (fairchem 1.x ``dens_trainer.py``): force input on the
corrupted atoms (``corrupt_ratio=0.5``), noise head there, loss 2·E + 100·F on the others +
10·noise L2MAE. Models at 2 blocks, L6, M2 and the paper's channel sizes (OC20 S2EF-2M config with
``num_layers=2``), in train mode (dropout and drop path on). Batch: two 37-atom Cu(111) 3x3x4 + O
slabs (74 atoms, 1480 edges: cutoff 12 Å, 20 neighbours), float32, 2 threads by default. Reports
the min and median of several rounds after one warm-up step.

Runs in the fairchem 1.x reference venv (tests/fixtures/equiformer_v2/make_reference_venv.sh with
DENS_REPO set, so that ``dens`` is importable beside fairchem 1.x); the reference side needs it,
ours (``dens.models.equiformer_v2.EquiformerV2``) is timed on the same inputs when importable::

    DENS_REPO=$PWD bash tests/fixtures/equiformer_v2/make_reference_venv.sh /tmp/refv2
    PYTHONPATH=$PWD /tmp/refv2/bin/python benchmarks/bench_equiformer_v2_step.py [--rounds 5]
        [--threads 2] [--blocks 2] [--skip-ours | --skip-reference] [--smoke]

``--blocks 12`` is the paper's 83M model (the DeNS/plain ratio the paper reports, +7.4%, is for
it); the rounds are interleaved (one step of each model per round) so that a changing machine
load falls on all models alike. Where fairchem 1.x is not importable the reference side is
skipped with a note. ``--smoke`` runs the smallest size (1 block of the mini scale's sizes, 1
round) to check that the script runs; its times mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import statistics
import sys
import time
from collections.abc import Callable

import ase
import numpy as np
import torch
from ase.build import add_adsorbate, fcc111

from dens.data.batch import Batch, Data

# OC20 S2EF-2M (fairchem 1.x configs/oc20/s2ef/2M/equiformer_v2/equiformer_v2_N@12_L@6_M@2.yml)
# with 2 blocks instead of 12.
REFERENCE_ATTRIBUTES = {
    "use_pbc": True,
    "regress_forces": True,
    "otf_graph": True,
    "max_neighbors": 20,
    "max_radius": 12.0,
    "max_num_elements": 90,
    "num_layers": 2,
    "sphere_channels": 128,
    "attn_hidden_channels": 64,
    "num_heads": 8,
    "attn_alpha_channels": 64,
    "attn_value_channels": 16,
    "ffn_hidden_channels": 128,
    "norm_type": "layer_norm_sh",
    "lmax_list": [6],
    "mmax_list": [2],
    "grid_resolution": 18,
    "num_sphere_samples": 128,
    "edge_channels": 128,
    "use_atom_edge_embedding": True,
    "distance_function": "gaussian",
    "num_distance_basis": 512,
    "attn_activation": "silu",
    "use_s2_act_attn": False,
    "ffn_activation": "silu",
    "use_gate_act": False,
    "use_grid_mlp": True,
    "alpha_drop": 0.1,
    "drop_path_rate": 0.05,
    "proj_drop": 0.0,
    "weight_init": "uniform",
}
# --smoke: the mini scale's EquiformerV2 sizes (config/models.yaml, preset mini), 1 block
SMOKE_ATTRIBUTES = {
    "num_layers": 1,
    "lmax_list": [2],
    "mmax_list": [1],
    "sphere_channels": 16,
    "attn_hidden_channels": 8,
    "num_heads": 2,
    "attn_alpha_channels": 8,
    "attn_value_channels": 4,
    "ffn_hidden_channels": 16,
    "edge_channels": 16,
    "grid_resolution": 8,
    "num_sphere_samples": 16,
}
ENERGY_COEF, FORCE_COEF, DENOISING_COEF = 2.0, 100.0, 10.0
CORRUPT_RATIO, NOISE_STD = 0.5, 0.1

Step = Callable[[], None]
# what the reference side imports; torch_geometric first: absent, it fails fast (fairchem 2.x,
# which the project's environment may hold, imports for seconds and lacks these models)
REFERENCE_MODULES = (
    "torch_geometric.data",
    "fairchem.core.models.base",
    "fairchem.core.models.equiformer_v2.equiformer_v2_dens",
    "fairchem.core.models.equiformer_v2.equiformer_v2_deprecated",
)


def slab_batch(seed: int = 0) -> Batch:
    """Two Cu(111) 3x3x4 + O (fcc hollow) slabs, 10 Å vacuum, periodic, subsurface fixed,
    differently rattled (0.05 Å), with random energy [B] and force [N, 3] labels."""
    rng = np.random.default_rng(seed)
    data = []
    for index in range(2):
        slab = fcc111("Cu", size=(3, 3, 4), vacuum=10.0)
        fixed = slab.get_tags() > 2
        add_adsorbate(slab, ase.Atoms("O"), 1.2, "fcc")
        fixed = np.append(fixed, False)
        slab.pbc = True
        slab.rattle(stdev=0.05, seed=seed + index)
        n = len(slab)
        data.append(
            Data(
                pos=torch.tensor(slab.positions, dtype=torch.float32),
                cell=torch.tensor(slab.cell[:], dtype=torch.float32).view(1, 3, 3),
                pbc=torch.ones(1, 3, dtype=torch.bool),
                atomic_numbers=torch.tensor(slab.numbers),
                natoms=torch.tensor([n]),
                fixed=torch.tensor(fixed, dtype=torch.float32),
                energy=torch.tensor([rng.normal()], dtype=torch.float32),
                forces=torch.tensor(rng.normal(size=(n, 3)), dtype=torch.float32),
            )
        )
    return Batch.from_data_list(data)


def dens_inputs(batch: Batch, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Corruption mask [N] (bool, ratio 0.5) and normalised noise target [N, 3] (zero where
    uncorrupted), as the fairchem 1.x DeNS trainer draws them."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch.num_nodes, generator=gen) < CORRUPT_RATIO
    noise = torch.randn(batch.num_nodes, 3, generator=gen) * mask.unsqueeze(-1)
    return mask, noise


def l2mae(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).norm(dim=-1).mean()


def loss_of(out: dict, batch: Batch, mask: torch.Tensor | None, noise: torch.Tensor | None):
    free = batch.fixed == 0
    loss = ENERGY_COEF * (out["energy"] - batch.energy).abs().mean()
    if mask is None:
        return loss + FORCE_COEF * l2mae(out["forces"][free], batch.forces[free])
    s2ef = free & ~mask
    denoise = free & mask
    loss = loss + FORCE_COEF * l2mae(out["forces"][s2ef], batch.forces[s2ef])
    noise_pred = out["noise"] if "noise" in out else out["forces"]
    return loss + DENOISING_COEF * l2mae(noise_pred[denoise], noise[denoise])


def reference_missing(modules: tuple[str, ...] = REFERENCE_MODULES) -> str | None:
    """Why the fairchem 1.x reference cannot run here (None when it can): the first of
    ``modules`` that does not import."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            return f"fairchem 1.x is not importable here ({error})"
    return None


def reference_batch(batch: Batch):
    """The same structures as a torch_geometric ``Batch``: fairchem 1.x reads its batches as
    one (``HydraModel.forward`` calls ``data.values()``: fairchem 31c0963,
    src/fairchem/core/models/base.py:332)."""
    from torch_geometric.data import Batch as PygBatch
    from torch_geometric.data import Data as PygData

    return PygBatch.from_data_list(
        [PygData(**{k: getattr(d, k) for k in d.keys()}) for d in batch.to_data_list()]
    )


def reference_steps(batch: Batch, mask: torch.Tensor, noise: torch.Tensor) -> dict[str, tuple]:
    """(step function, trainable parameters) of the fairchem 1.x models."""
    import fairchem.core.models.equiformer_v2.equiformer_v2_dens  # noqa: F401  (registers)
    from fairchem.core.models.base import HydraModel
    from fairchem.core.models.equiformer_v2.equiformer_v2_deprecated import EquiformerV2

    batch = reference_batch(batch)
    plain = EquiformerV2(**REFERENCE_ATTRIBUTES).train()
    dens = HydraModel(
        backbone={
            "model": "equiformer_v2_dens_backbone",
            **REFERENCE_ATTRIBUTES,
            "use_force_encoding": True,
            "use_noise_schedule_sigma_encoding": False,
        },
        heads={
            "energy": {"module": "eqV2_DeNS_scalar_head", "use_denoising": True},
            "forces": {"module": "eqV2_DeNS_vector_head"},
        },
        otf_graph=True,
        pass_through_head_outputs=True,
    ).train()
    corrupted = batch.clone()
    corrupted.denoising_pos_forward = True
    corrupted.noise_mask = mask

    def plain_step() -> None:
        plain.zero_grad(set_to_none=True)
        loss_of(plain(batch), batch, None, None).backward()

    def dens_step() -> None:
        dens.zero_grad(set_to_none=True)
        loss_of(dens(corrupted), corrupted, mask, noise).backward()

    return {"plain": (plain_step, n_params(plain)), "dens": (dens_step, n_params(dens))}


def ours_kwargs(cls: type) -> tuple[dict, list[str]]:
    """Our settings (``cls.settings_type``'s fields) from the reference attributes
    (lmax_list/mmax_list -> lmax/mmax, max_radius -> cutoff, same names otherwise;
    num_distance_basis dropped: the reference ignores it and always expands distances in 600
    Gaussians); reference attributes our settings do not have are returned apart."""
    renamed = dict(REFERENCE_ATTRIBUTES)
    del renamed["num_distance_basis"]
    renamed["lmax"] = renamed.pop("lmax_list")[0]
    renamed["mmax"] = renamed.pop("mmax_list")[0]
    renamed["cutoff"] = renamed.pop("max_radius")
    accepted = {item.name for item in dataclasses.fields(cls.settings_type)}
    return (
        {k: v for k, v in renamed.items() if k in accepted},
        sorted(k for k in renamed if k not in accepted),
    )


def our_steps(batch: Batch, mask: torch.Tensor, noise: torch.Tensor) -> dict[str, tuple] | str:
    """Step functions of dens.models.equiformer_v2.EquiformerV2, or why they cannot run."""
    try:
        cls = importlib.import_module("dens.models.equiformer_v2").EquiformerV2
    except (ImportError, AttributeError) as error:
        return f"dens.models.equiformer_v2.EquiformerV2 is not importable here ({error})"
    kwargs, dropped = ours_kwargs(cls)
    if dropped:
        print(f"ours: reference attributes not in our settings: {', '.join(dropped)}")
    plain = cls(cls.settings_type(**kwargs)).train()
    dens = cls(cls.settings_type(**kwargs, force_encoding=True, noise_head=True)).train()
    force_input = batch.forces * mask.unsqueeze(-1)

    def plain_step() -> None:
        plain.zero_grad(set_to_none=True)
        loss_of(plain(batch), batch, None, None).backward()

    def dens_step() -> None:
        dens.zero_grad(set_to_none=True)
        out = dens(batch, force_input=force_input, predict_noise=True)
        loss_of(out, batch, mask, noise).backward()

    return {"plain": (plain_step, n_params(plain)), "dens": (dens_step, n_params(dens))}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def time_steps(
    steps: dict[tuple[str, str], Step], rounds: int
) -> dict[tuple[str, str], tuple[float, float]]:
    """name -> (min, median) wall seconds of ``rounds`` steps after one warm-up step each; the
    rounds are interleaved (one step of every model per round), so that a load that changes
    during the run falls on all models alike."""
    for step in steps.values():
        torch.manual_seed(0)
        step()
    times: dict[tuple[str, str], list[float]] = {name: [] for name in steps}
    for index in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
        print(f"round {index + 1}/{rounds} done", file=sys.stderr, flush=True)
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--blocks", type=int, default=2, help="transformer blocks (the paper's 83M model has 12)"
    )
    parser.add_argument("--skip-ours", action="store_true", help="time the reference only")
    parser.add_argument(
        "--skip-reference", action="store_true", help="time ours only (no fairchem 1.x needed)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="smallest size: 1 mini block, 1 round (a run check)"
    )
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    REFERENCE_ATTRIBUTES["num_layers"] = args.blocks
    if args.smoke:
        REFERENCE_ATTRIBUTES.update(SMOKE_ATTRIBUTES)
        args.blocks, args.rounds = 1, 1
    batch = slab_batch()
    mask, noise = dens_inputs(batch)
    print(
        f"batch: {batch.num_graphs} x Cu(111)+O, {batch.num_nodes} atoms, {int(mask.sum())} "
        f"corrupted; {args.blocks} blocks, float32, {args.threads} threads, {args.rounds} "
        "interleaved rounds after 1 warm-up"
    )
    sides = {}
    missing = "skipped (--skip-reference)" if args.skip_reference else reference_missing()
    if missing is None:
        sides["reference"] = reference_steps(batch, mask, noise)
    else:
        print(f"NOTE: reference not timed: {missing}")
    ours = "skipped (--skip-ours)" if args.skip_ours else our_steps(batch, mask, noise)
    if isinstance(ours, str):
        print(f"NOTE: ours not timed: {ours}")
    else:
        sides["ours"] = ours
    steps = {(side, kind): pair for side, pairs in sides.items() for kind, pair in pairs.items()}
    timings = time_steps({key: step for key, (step, _) in steps.items()}, args.rounds)
    medians = {key: mid for key, (_, mid) in timings.items()}
    print(f"{'model':<16} {'params':>12} {'min s':>8} {'median s':>9}")
    for (side, kind), (low, mid) in timings.items():
        params = steps[side, kind][1]
        print(f"{side + ' ' + kind:<16} {params:>12,d} {low:>8.3f} {mid:>9.3f}")
    for side in sides:
        ratio = medians[side, "dens"] / medians[side, "plain"]
        print(f"{side} DeNS/plain (median): {ratio:.2f}")
    if "ours" in sides and "reference" in sides:
        for kind in ("plain", "dens"):
            ratio = medians["ours", kind] / medians["reference", kind]
            print(f"ours/reference {kind} (median): {ratio:.2f}")


if __name__ == "__main__":
    main()
