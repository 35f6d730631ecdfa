"""NequIP (the ``nequip`` package, an optional dependency: ``pip install -e '.[nequip]'``) with the
DeNS force encoding and noise head added through nequip's own extension points (network.py)."""

from dens.models.nequip.network import FORCE_INPUT_KEY, NOISE_KEY, NequIP

__all__ = ["FORCE_INPUT_KEY", "NOISE_KEY", "NequIP"]
