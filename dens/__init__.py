"""dens: DeNS (Denoising Non-Equilibrium Structures; Liao, Smidt, Shuaibi, Das, TMLR 2024) as a
library, and the pipeline that reproduces the paper.

The public API, what README.md's "DeNS in your own training loop" uses::

    from dens import DeNSSettings, LossSettings, corrupt, dens_coefficient, dens_loss

- DeNS itself (dens.denoising): ``DeNSSettings``, ``LossSettings``, ``corrupt``,
  ``force_encoding_input``, ``dens_coefficient``, ``dens_loss`` (Eq. 1 alone with no corruption).
- Models (dens.models): ``build_model``, ``count_parameters``, ``Equiformer`` and its
  ``EquiformerSettings``.
- Data (dens.data): ``atoms_to_data``, ``AseLmdbDataset``; labels: ``Normalizer``.
- Use of a trained run (dens.inference, dens.calculator): ``load_trained_model``,
  ``DeNSCalculator``. The training loop is ``dens.train.train`` (the module shares its name;
  its pieces are in dens.training).

Names are imported on first use, so ``import dens`` (which the Snakefile does) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DeNSSettings": "dens.denoising",
    "LossSettings": "dens.denoising",
    "corrupt": "dens.denoising",
    "force_encoding_input": "dens.denoising",
    "dens_coefficient": "dens.denoising",
    "dens_loss": "dens.denoising",
    "build_model": "dens.models",
    "count_parameters": "dens.models",
    "Equiformer": "dens.models.equiformer",
    "EquiformerSettings": "dens.models.equiformer",
    "atoms_to_data": "dens.data.structures",
    "AseLmdbDataset": "dens.data.aselmdb",
    "Normalizer": "dens.normalization",
    "load_trained_model": "dens.inference",
    "DeNSCalculator": "dens.calculator",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dens' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
