"""Time one eSCN training step, fairchem 1.x reference vs ours, without and with DeNS.

A step is forward + backward of the training loss after ``zero_grad`` (no optimizer update), as in
``bench_equiformer_v2_step.py``, whose batch, DeNS inputs, loss and timer this script reuses: two
37-atom Cu(111) 3x3x4 + O slabs (74 atoms, 1480 edges: cutoff 12 Å, 20 neighbours), float32; loss
2·E + 100·F (L2MAE), and with DeNS the DeNS trainer's denoising forward (force input on the
corrupted atoms, ratio 0.5, noise predicted there, + 10·noise L2MAE). Models: the official OC20
S2EF-2M config eSCN-L6-M2-Lay12 with 2 layers instead of 12 (L6, M2, 128 sphere channels, 256
hidden, 128 edge channels, 128 sphere points). Reference: fairchem 1.x ``escn.eSCN`` (commit
31c0963) and the DeNS repository's eSCN-DeNS rebuilt on it (tests/fixtures/escn/reference_escn.py);
ours: ``dens.models.escn.ESCN``. After one warm-up step each, the four steps run round-robin
(reference plain, ours plain, reference DeNS, ours DeNS) for several rounds, so that a shared
machine's changing load hits all four alike; reports the min and median of each.

Runs in the fairchem 1.x reference venv (tests/fixtures/equiformer_v2/make_reference_venv.sh) with
this checkout on the path::

    PYTHONPATH=$PWD /tmp/refv2/bin/python benchmarks/bench_escn_step.py [--rounds 5] [--threads 2]
        [--skip-reference] [--smoke]

Where fairchem 1.x is not importable the reference side is skipped with a note. ``--smoke`` runs
the smallest size (1 layer of the mini scale's eSCN sizes, 1 round) to check that the script
runs; its times mean nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from bench_equiformer_v2_step import (
    dens_inputs,
    loss_of,
    n_params,
    reference_batch,
    reference_missing,
    slab_batch,
    time_steps,
)

from dens.data.batch import Batch

REPO = Path(__file__).resolve().parents[1]
# fairchem 1.x configs/oc20/s2ef/2M/escn/eSCN-L6-M2-Lay12.yml with 2 layers instead of 12
REFERENCE_ATTRIBUTES = {
    "use_pbc": True,
    "regress_forces": True,
    "otf_graph": True,
    "max_neighbors": 20,
    "cutoff": 12.0,
    "max_num_elements": 90,
    "num_layers": 2,
    "lmax_list": [6],
    "mmax_list": [2],
    "sphere_channels": 128,
    "hidden_channels": 256,
    "edge_channels": 128,
    "num_sphere_samples": 128,
    "distance_function": "gaussian",
    "basis_width_scalar": 2.0,
}
OURS = {  # the same model in our constructor's names
    "num_layers": 2,
    "lmax": 6,
    "mmax": 2,
    "sphere_channels": 128,
    "hidden_channels": 256,
    "edge_channels": 128,
    "num_sphere_samples": 128,
    "basis_width": 2.0,
    "cutoff": 12.0,
    "max_neighbors": 20,
}
# --smoke: the mini scale's eSCN sizes (config/models.yaml, escn-mini) with 1 layer, in the
# reference's names and in ours
SMOKE = {
    "num_layers": 1,
    "sphere_channels": 16,
    "hidden_channels": 32,
    "edge_channels": 16,
    "num_sphere_samples": 32,
}
SMOKE_REFERENCE = {**SMOKE, "lmax_list": [2], "mmax_list": [1]}
SMOKE_OURS = {**SMOKE, "lmax": 2, "mmax": 1}
REFERENCE_MODULES = ("torch_geometric.data", "fairchem.core.models.escn.escn")


def reference_steps(batch: Batch, mask: torch.Tensor, noise: torch.Tensor) -> dict[str, tuple]:
    """(step function, trainable parameters) of the reference models."""
    sys.path.insert(0, str(REPO / "tests" / "fixtures" / "escn"))
    from reference_escn import build

    plain = build("escn", REFERENCE_ATTRIBUTES).train()
    dens = build("escn_dens", dict(REFERENCE_ATTRIBUTES, use_force_encoding=True)).train()
    batch = reference_batch(batch)
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


def our_steps(batch: Batch, mask: torch.Tensor, noise: torch.Tensor) -> dict[str, tuple]:
    """(step function, trainable parameters) of dens.models.escn.ESCN."""
    from dens.models.escn import ESCN, ESCNSettings

    plain = ESCN(ESCNSettings(**OURS)).train()
    dens = ESCN(ESCNSettings(**OURS, force_encoding=True, noise_head=True)).train()
    force_input = batch.forces * mask.unsqueeze(-1)

    def plain_step() -> None:
        plain.zero_grad(set_to_none=True)
        loss_of(plain(batch), batch, None, None).backward()

    def dens_step() -> None:
        dens.zero_grad(set_to_none=True)
        out = dens(batch, force_input=force_input, predict_noise=True)
        loss_of(out, batch, mask, noise).backward()

    return {"plain": (plain_step, n_params(plain)), "dens": (dens_step, n_params(dens))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--skip-reference", action="store_true", help="time ours only (no fairchem 1.x needed)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="smallest size: 1 mini layer, 1 round (a run check)"
    )
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    if args.smoke:
        REFERENCE_ATTRIBUTES.update(SMOKE_REFERENCE)
        OURS.update(SMOKE_OURS)
        args.rounds = 1
    batch = slab_batch()
    mask, noise = dens_inputs(batch)
    print(
        f"batch: {batch.num_graphs} x Cu(111)+O, {batch.num_nodes} atoms, {int(mask.sum())} "
        f"corrupted; float32, {args.threads} threads, {args.rounds} rounds after 1 warm-up"
    )
    sides = {}
    missing = (
        "skipped (--skip-reference)"
        if args.skip_reference
        else reference_missing(REFERENCE_MODULES)
    )
    if missing is None:
        sides["reference"] = reference_steps(batch, mask, noise)
    else:
        print(f"NOTE: reference not timed: {missing}")
    sides["ours"] = our_steps(batch, mask, noise)
    steps = {(side, kind): sides[side][kind] for kind in ("plain", "dens") for side in sides}
    timings = time_steps({key: step for key, (step, _) in steps.items()}, args.rounds)
    medians = {key: mid for key, (_, mid) in timings.items()}
    print(f"{'model':<16} {'params':>12} {'min s':>8} {'median s':>9}")
    for (side, kind), (_, params) in steps.items():
        low, mid = timings[side, kind]
        print(f"{side + ' ' + kind:<16} {params:>12,d} {low:>8.3f} {mid:>9.3f}")
    for side in sides:
        ratio = medians[side, "dens"] / medians[side, "plain"]
        print(f"{side} DeNS/plain (median): {ratio:.3f}")
    for kind in ("plain", "dens") if "reference" in sides else ():
        ratio = medians["ours", kind] / medians["reference", kind]
        best = timings["ours", kind][0] / timings["reference", kind][0]
        print(f"ours/reference {kind}: {ratio:.2f} (medians), {best:.2f} (minima)")


if __name__ == "__main__":
    main()
