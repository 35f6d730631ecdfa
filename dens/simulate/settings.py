"""Settings of the MD17 simulations (dens.simulate): the scale's ``simulation.md17`` entry and
the fixed values of Fu et al."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dens.errors import ConfigError
from dens.setting_fields import check_fields, setting

TIMESTEP_FS = 0.5
"""MD time step (Fu et al.; MDsim configs/simulate/*.yml ``timestep: 0.5``)."""
TEMPERATURE_K = 500.0
"""Thermostat and initial-velocity temperature (MDsim ``temperature: 500.``, ``T_init: 500.``)."""
THERMOSTAT_TIME_FS = 10.0
"""Nose-Hoover damping time: MDsim's ``ttime: 20`` time steps of 0.5 fs."""
BOND_SKIN_A = 0.3
"""Added to each atom's covalent radius when finding bonds (ASE NeighborList's default skin)."""
BOND_DEVIATION_A = 0.5
"""A simulation is unstable once a bond deviates by more than this from its reference length."""
HR_RANGE_A = (1e-6, 10.0)
HR_BINS = 500
"""h(r): 500 bins on [1e-6, 10] Å (MDsim observable.ipynb, MD17)."""


@dataclass(frozen=True)
class SimulationSettings:
    """One scale's simulation settings (``simulation.md17`` in config/scales/<scale>.yaml) and
    the fixed ones of Fu et al. (module constants)."""

    length_ps: float = setting(exclusiveMinimum=0)
    initial_configurations: int = setting(minimum=1)
    frame_every: int = setting(minimum=1)  # MD steps
    timestep_fs: float = setting(TIMESTEP_FS, exclusiveMinimum=0)
    temperature_K: float = setting(TEMPERATURE_K, exclusiveMinimum=0)
    thermostat_time_fs: float = setting(THERMOSTAT_TIME_FS, exclusiveMinimum=0)
    bond_deviation_A: float = setting(BOND_DEVIATION_A, exclusiveMinimum=0)
    #: A cap on the MD steps of a simulation below ``length_ps`` (the rehearsal scale's
    #: ``simulation.md17.max_steps``); None: the whole length.
    max_steps: int | None = setting(None, minimum=1)

    def __post_init__(self) -> None:
        check_fields(self, "simulation.md17")
        if self.steps < 1:
            raise ConfigError(
                f"simulation.md17.length_ps: {self.length_ps} ps is less than one "
                f"{self.timestep_fs} fs step"
            )

    @classmethod
    def from_scale(cls, scale: Mapping[str, Any], scale_name: str) -> SimulationSettings:
        """The settings of a scale's ``simulation.md17`` entry."""
        try:
            entry = scale["simulation"]["md17"]
        except KeyError as error:
            raise ConfigError(
                f"config/scales/{scale_name}.yaml: no simulation.md17 entry (length_ps, "
                "initial_configurations, frame_every)"
            ) from error
        return cls(
            length_ps=entry["length_ps"],
            initial_configurations=entry["initial_configurations"],
            frame_every=entry["frame_every"],
            max_steps=entry.get("max_steps"),
        )

    @property
    def steps(self) -> int:
        """Number of MD steps of a simulation that stays stable (at most ``max_steps``)."""
        steps = round(self.length_ps * 1000.0 / self.timestep_fs)
        return steps if self.max_steps is None else min(steps, self.max_steps)
