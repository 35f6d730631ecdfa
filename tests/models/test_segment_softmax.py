"""Attention softmax over each node's incoming edges (dens.models.common.segment_softmax)."""

from __future__ import annotations

import pytest
import torch

from dens.models.common.segment_softmax import segment_softmax


def test_equals_softmax_of_each_segment() -> None:
    gen = torch.Generator().manual_seed(0)
    index = torch.tensor([2, 0, 2, 2, 1, 0, 3, 3, 2])
    logits = 30 * torch.randn(len(index), 3, generator=gen, dtype=torch.float64)
    out = segment_softmax(logits, index, num_segments=5)
    for node in range(4):
        edges = index == node
        torch.testing.assert_close(out[edges], torch.softmax(logits[edges], dim=0))
    assert out.shape == logits.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA float16 autocast needs a GPU")
def test_float16_logits_under_cuda_autocast() -> None:
    """Under CUDA autocast exp returns float32 for float16 logits (EquiformerV2's attention with
    mixed precision): the sums follow the exponentials' dtype."""
    index = torch.tensor([0, 0, 1, 1, 1], device="cuda")
    logits = torch.randn(5, 2, device="cuda", dtype=torch.float16)
    with torch.autocast("cuda", dtype=torch.float16):
        out = segment_softmax(logits, index, num_segments=2)
    expected = segment_softmax(logits.float(), index, num_segments=2)
    torch.testing.assert_close(out.float(), expected, atol=1e-3, rtol=1e-3)
