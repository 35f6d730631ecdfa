"""Softmax over the edges that end in the same node (graph attention weights).

Equiformer (Liao & Smidt, ICLR 2023, Sec. 3.3) and EquiformerV2 (Liao et al., ICLR 2024,
Sec. 4.1) normalise attention logits over each node's incoming edges. The maximum of each
segment is subtracted first (without gradient: the softmax does not depend on it). Under CUDA
float16 autocast ``exp`` returns float32 for float16 logits; the sums are kept in the dtype of
the exponentials (as torch_geometric's softmax does).
"""

from __future__ import annotations

import torch
from torch import Tensor


def segment_softmax(logits: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """Softmax of logits [E, H] over the edges that share ``index`` [E] (target node) -> [E, H]."""
    with torch.no_grad():
        shift = logits.new_full((num_segments, logits.shape[1]), float("-inf"))
        shift = shift.scatter_reduce(
            0, index.unsqueeze(1).expand_as(logits), logits, reduce="amax", include_self=True
        )
    ex = torch.exp(logits - shift.index_select(0, index))
    denom = ex.new_zeros(num_segments, logits.shape[1]).index_add(0, index, ex)
    return ex / denom.index_select(0, index)
