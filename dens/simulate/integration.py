"""One simulation (dens.simulate): Nose-Hoover NVT from an initial configuration until it
collapses or lasts the simulation length, saving frames and state so that a rerun continues it
bit for bit."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.io.trajectory import Trajectory
from ase.md.nose_hoover_chain import NoseHooverChainNVT
from ase.md.velocitydistribution import thermalize_momenta
from tqdm import tqdm

from dens import atomic_files
from dens.data.validation import check_structure
from dens.errors import InvalidDataError
from dens.simulate.observables import (
    bond_lengths,
    bonded_pairs,
    distance_histogram,
    hr_mae,
    max_bond_deviation,
)
from dens.simulate.settings import SimulationSettings
from dens.stopping import TIME_LIMIT, StopRequested

STATE_FILE = "state.npz"
TRAJECTORY_FILE = "trajectory.traj"


@dataclass(frozen=True)
class SimulationResult:
    """Outcome of one simulation (one initial configuration)."""

    initial_index: int
    """Row of the initial configuration in the initial split(s) (0-based)."""
    steps: int
    """Steps simulated: the collapse step of an unstable simulation, else all of them."""
    stable: bool
    stability_ps: float
    hr_mae: float
    frames: int
    mean_temperature_K: float
    """Mean kinetic temperature over the saved frames."""
    conserved_energy_drift_eV: float
    """Largest |E_pot + E_kin + E_thermostat - its initial value| over the saved frames (the
    Nose-Hoover invariant: a check of the integration, not a metric of the paper)."""


def _make_dynamics(atoms: Atoms, settings: SimulationSettings) -> NoseHooverChainNVT:
    """Nose-Hoover NVT with one thermostat (see the module docstring for why this one)."""
    return NoseHooverChainNVT(
        atoms,
        timestep=settings.timestep_fs * units.fs,
        temperature_K=settings.temperature_K,
        tdamp=settings.thermostat_time_fs * units.fs,
        tchain=1,
    )


def _thermostat(dynamics: NoseHooverChainNVT) -> Any:
    """The chain's state holder; ASE 3.29 keeps eta and p_eta in ``_thermostat`` (no public
    accessor), which resuming needs."""
    thermostat = getattr(dynamics, "_thermostat", None)
    if not (hasattr(thermostat, "_eta") and hasattr(thermostat, "_p_eta")):
        import ase

        raise RuntimeError(
            f"ASE {ase.__version__}: NoseHooverChainNVT keeps its thermostat state elsewhere "
            "than ASE 3.29 (pyproject.toml pins ase==3.29.0); dens.simulate cannot save it"
        )
    return thermostat


def _save_state(path: Path, dynamics: NoseHooverChainNVT, **values: Any) -> None:
    """Save positions, momenta, the thermostat variables (eta, p_eta) and ``values`` atomically
    (write, then rename: a kill leaves the previous state)."""
    thermostat = _thermostat(dynamics)
    with atomic_files.atomic_write(path, "saving simulation state") as handle:
        np.savez(
            handle,
            positions=dynamics.atoms.get_positions(),
            momenta=dynamics.atoms.get_momenta(),
            eta=thermostat._eta,
            p_eta=thermostat._p_eta,
            **{key: np.asarray(value) for key, value in values.items()},
        )


def _truncate_trajectory(path: Path, frames: int) -> None:
    """Keep the first ``frames`` frames of an ASE trajectory: frames a killed run appended after
    its last saved state are dropped (the resumed run writes them again)."""
    with Trajectory(path) as trajectory:
        if len(trajectory) < frames:
            raise InvalidDataError(
                f"{path}: {len(trajectory)} frames, but {path.parent / STATE_FILE} was saved "
                f"after frame {frames}; delete {path.parent} to start this simulation afresh"
            )
        if len(trajectory) == frames:
            return
        kept = [trajectory[index] for index in range(frames)]
    with (
        atomic_files.atomic_path(path, "truncating trajectory") as tmp,
        Trajectory(tmp, "w") as out,
    ):
        for atoms in kept:
            out.write(atoms)


@dataclass
class _Progress:
    """How far a simulation is, saved with its state: steps done, frames written, whether it is
    still stable, the initial conserved energy and the largest drift from it so far."""

    step: int
    frames: int
    stable: bool
    initial_energy: float
    drift: float


def _restore(
    atoms: Atoms, settings: SimulationSettings, seed: int | Sequence[int], out_dir: Path
) -> dict[str, np.ndarray] | None:
    """Set ``atoms``' positions and momenta from the state saved in ``out_dir`` (dropping the
    frames written after it) and return that state; without one, draw the momenta at the
    temperature, remove any trajectory and return None."""
    state_path, trajectory_path = out_dir / STATE_FILE, out_dir / TRAJECTORY_FILE
    if not state_path.is_file():
        thermalize_momenta(atoms, settings.temperature_K, rng=np.random.default_rng(seed))
        trajectory_path.unlink(missing_ok=True)
        return None
    with np.load(state_path) as state:
        saved = {key: state[key].copy() for key in state.files}
    atoms.set_positions(saved["positions"])
    atoms.set_momenta(saved["momenta"])
    _truncate_trajectory(trajectory_path, int(saved["frames"]))
    return saved


def _progress(dynamics: NoseHooverChainNVT, saved: dict[str, np.ndarray] | None) -> _Progress:
    """The progress of a new simulation, or that of ``saved`` (whose thermostat variables are
    restored into ``dynamics``)."""
    if saved is None:
        return _Progress(0, 0, True, dynamics.get_conserved_energy(), 0.0)
    thermostat = _thermostat(dynamics)
    thermostat._eta, thermostat._p_eta = saved["eta"], saved["p_eta"]
    return _Progress(
        int(saved["step"]),
        int(saved["frames"]),
        bool(saved["stable"]),
        float(saved["initial_energy"]),
        float(saved["drift"]),
    )


def _save_progress(out_dir: Path, dynamics: NoseHooverChainNVT, progress: _Progress) -> None:
    _save_state(
        out_dir / STATE_FILE,
        dynamics,
        step=progress.step,
        frames=progress.frames,
        stable=progress.stable,
        initial_energy=progress.initial_energy,
        drift=progress.drift,
    )


def _save_frame(out_dir: Path, dynamics: NoseHooverChainNVT, progress: _Progress) -> None:
    """Append the current frame to the trajectory, update the drift, then save the state."""
    with Trajectory(out_dir / TRAJECTORY_FILE, "a") as trajectory:
        trajectory.write(dynamics.atoms)
    progress.frames += 1
    drift = abs(dynamics.get_conserved_energy() - progress.initial_energy)
    progress.drift = max(progress.drift, drift)
    _save_progress(out_dir, dynamics, progress)


def _integrate(
    dynamics: NoseHooverChainNVT,
    progress: _Progress,
    settings: SimulationSettings,
    bonds: tuple[np.ndarray, np.ndarray],
    out_dir: Path,
    label: str,
    stop_at: float | None,
) -> None:
    """Step until the simulation collapses or lasts ``settings.steps``, saving a frame every
    ``settings.frame_every`` steps, at the collapse and at the end; ``bonds``: the
    bonded pairs and their reference lengths."""
    pairs, reference_lengths = bonds
    with tqdm(
        total=settings.steps, initial=progress.step, desc=label, unit="step", mininterval=5.0
    ) as bar:
        while progress.stable and progress.step < settings.steps:
            if stop_at is not None and time.time() >= stop_at:
                _save_progress(out_dir, dynamics, progress)
                raise StopRequested(
                    TIME_LIMIT,
                    f"at step {progress.step} of {label}",
                    "the state is saved and rerunning the job continues the trajectory there",
                )
            dynamics.step()
            progress.step += 1
            bar.update(1)
            deviation = max_bond_deviation(dynamics.atoms.positions, pairs, reference_lengths)
            progress.stable = bool(deviation <= settings.bond_deviation_A)
            step = progress.step
            if not progress.stable or step % settings.frame_every == 0 or step == settings.steps:
                _save_frame(out_dir, dynamics, progress)


def _result(
    out_dir: Path,
    progress: _Progress,
    settings: SimulationSettings,
    h_reference: np.ndarray,
    initial_index: int,
) -> SimulationResult:
    """The outcome of a finished simulation, from its trajectory."""
    with Trajectory(out_dir / TRAJECTORY_FILE) as trajectory:
        frames_positions = np.stack([frame.positions for frame in trajectory])
        temperatures = [frame.get_temperature() for frame in trajectory]
    return SimulationResult(
        initial_index=initial_index,
        steps=progress.step,
        stable=progress.stable,
        stability_ps=progress.step * settings.timestep_fs / 1000.0,
        hr_mae=hr_mae(distance_histogram(frames_positions), h_reference),
        frames=len(frames_positions),
        mean_temperature_K=float(np.mean(temperatures)),
        conserved_energy_drift_eV=progress.drift,
    )


def run_simulation(
    calculator: Calculator,
    numbers: np.ndarray,
    positions: np.ndarray,
    reference_frames: np.ndarray,
    h_reference: np.ndarray,
    settings: SimulationSettings,
    out_dir: Path,
    seed: int | Sequence[int],
    initial_index: int = 0,
    label: str = "simulation",
    stop_at: float | None = None,
) -> SimulationResult:
    """Simulate a molecule from ``positions`` [N, 3] (Å) with atomic numbers ``numbers`` [N],
    or continue the simulation saved in ``out_dir``, until it collapses or lasts
    ``settings.length_ps``.

    reference_frames [F, N, 3] (Å): the reference data, whose mean bond lengths the stability
    criterion compares against. h_reference [HR_BINS]: its h(r) (``distance_histogram``).
    seed: seeds the initial velocities (numpy default_rng).
    The start passes dens.data.validation (InvalidStructureError naming ``label``, the atom and
    the value) before anything is written.
    stop_at: a wall-clock time (time.time()) at which to save the state and raise
        StopRequested (a Slurm job ends itself before its time limit: dens.pipeline.slurm).
    """
    check_structure(numbers, positions, f"{label}: start")
    atomic_files.make_folder(out_dir, "creating simulation folder")
    pairs = bonded_pairs(numbers, positions)
    reference_lengths = bond_lengths(reference_frames, pairs).mean(axis=0)
    atoms = Atoms(numbers=numbers, positions=positions)
    saved = _restore(atoms, settings, seed, out_dir)
    atoms.calc = calculator
    dynamics = _make_dynamics(atoms, settings)
    progress = _progress(dynamics, saved)
    if progress.frames == 0:
        _save_frame(out_dir, dynamics, progress)
    _integrate(dynamics, progress, settings, (pairs, reference_lengths), out_dir, label, stop_at)
    return _result(out_dir, progress, settings, h_reference, initial_index)
