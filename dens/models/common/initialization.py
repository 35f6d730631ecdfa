"""Initial weights that do not depend on which other modules a network has.

A DeNS model and its baseline differ only by DeNS modules (force encoding, noise head) and
possibly the width of the last block. Built from one global random stream, every module
created after a DeNS-only one would start from other weights, so a DeNS-vs-baseline comparison
would also compare two initialisations. Instead a network draws ONE base seed from torch's
global generator and builds each named part inside ``part_init(base_seed, name)``, which seeds
a private stream from (base seed, name) and restores the global stream afterwards. A part's
initial weights then depend only on the seed, its name and its own shapes: shared parameters
of equal shape are identical whatever DeNS modules exist, and the global stream after
construction is the same too.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator

import torch


def draw_base_seed() -> int:
    """One draw from torch's global generator: the seed of a network's parts."""
    return int(torch.randint(0, 2**62, (1,), dtype=torch.int64))


@contextlib.contextmanager
def part_init(base_seed: int, name: str) -> Iterator[None]:
    """Build the modules created inside from a private stream seeded by (base_seed, name)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed((base_seed + zlib.crc32(name.encode())) % 2**63)
        yield
