"""NequIP (the ``nequip`` package, an optional dependency: ``pip install -e '.[nequip]'``) with the
DeNS force encoding and noise head added through nequip's own extension points (network.py); its
hyper-parameters are NequIPSettings (settings.py)."""

from dens.models.nequip.network import FORCE_INPUT_KEY, NOISE_KEY, NequIP
from dens.models.nequip.settings import NequIPSettings

__all__ = ["FORCE_INPUT_KEY", "NOISE_KEY", "NequIP", "NequIPSettings"]
