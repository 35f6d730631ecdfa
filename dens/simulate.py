"""Molecular dynamics with a trained MD17 model: stability and h(r) (paper App. D.3, Table 10).

The paper follows Fu et al. (TMLR 2023, "Forces are not enough"; code: github kyonofx/MDsim,
``simulate.py``, ``configs/simulate/<molecule>.yml``, ``mdsim/md/integrator.py`` and the
metrics of ``observable.ipynb``). What we do, and where it comes from:

    ensemble     NVT at 500 K, velocities drawn from the Maxwell-Boltzmann distribution at 500 K
                 (MDsim ``T_init: 500``, ASE's ``MaxwellBoltzmannDistribution``, which ASE 3.29
                 calls ``thermalize_momenta``; no centre-of-mass or rotation removal, as there)
    thermostat   Nose-Hoover: ASE's ``NoseHooverChainNVT`` with a chain of one thermostat and
                 damping time 10 fs. MDsim's ``NoseHoover`` integrator is a single Nose-Hoover
                 thermostat with mass Q = 3 N kT (ttime * dt)^2, ttime = 20, dt = 0.5 fs; ASE's
                 first chain element has Q = 3 N kT tdamp^2, so tchain = 1 and tdamp = 20 * 0.5 fs
                 give the same equations of motion, integrated by a time-reversible Trotter
                 splitting (Martyna-Tuckerman-Klein) rather than MDsim's explicit update.
                 (``ase.md.npt.NPT``, in NVT mode with pfactor=None, is Nose-Hoover too, but
                 ASE 3.29 deprecates it as an alias of ``MelchionnaNPT``, a barostat integrator
                 written for a cell; Berendsen, Bussi, Langevin and Andersen are not
                 Nose-Hoover.)
    time step    0.5 fs; 300 ps (600,000 steps) at the paper scale, shorter at small scales
                 (``simulation.md17`` in config/scales/<scale>.yaml)
    start        test configurations drawn at random (seeded by the run's training seed, so the
                 runs with and without DeNS start from the same ones); MDsim draws one random
                 test index per simulation seed, Fu et al. run several simulations per model
    bonds        atom pairs closer than r_cov(i) + r_cov(j) + 2 * 0.3 Å in the initial
                 configuration (ASE covalent radii; MDsim builds an ASE NeighborList from
                 ``natural_cutoffs`` with its default skin 0.3 Å, which ASE adds to each atom's
                 radius); reference length = mean over every frame of the reference data
                 (every split of the dataset: the whole MD17 trajectory at the paper scale)
    stability    time of the first step at which some bond deviates by more than 0.5 Å from its
                 reference length (or a position goes non-finite), capped at the simulation
                 length; the simulation stops there. MDsim checks the frames saved every
                 100 steps after simulating the whole 300 ps, so our time is at most one frame
                 interval (0.05 ps) earlier than theirs; the frames before it are the same.
    h(r)         histogram density of all interatomic distances over the saved frames up to
                 and including the collapse (MDsim ``get_hr``: 500 bins on [1e-6, 10] Å,
                 ``np.histogram(density=True)``), for the simulation and for the reference data;
                 h(r) MAE = mean over bins of |h_sim - h_ref| times 10 Å (MDsim ``mae(..., xlim)``)

A simulation resumes after a kill: every ``frame_every`` steps the frame is appended to the
ASE trajectory and the state (positions, momenta, thermostat variables, step, frames written)
is saved atomically; a rerun continues the same trajectory from there, bit for bit (the force
field is deterministic). A simulation directory made with other settings, another checkpoint or
other data is moved aside (dens.runs.move_aside) and the simulation starts afresh. Progress is a
tqdm bar per simulation (stderr: the job's log).

Layout, in ``<run>/simulate/``: ``init<k>/trajectory.traj`` (ASE trajectory: positions,
momenta, energy and forces of each saved frame), ``init<k>/state.npz``, and ``metrics.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.data import covalent_radii
from ase.io.trajectory import Trajectory
from ase.md.nose_hoover_chain import NoseHooverChainNVT
from ase.md.velocitydistribution import thermalize_momenta
from tqdm import tqdm

from dens import atomic_files
from dens.atomic_files import file_digest, file_fingerprint
from dens.data.validation import check_structure
from dens.errors import ConfigError, InvalidDataError
from dens.layout import METRICS_FILE, RunDirectory
from dens.runs import move_aside
from dens.stopping import TIME_LIMIT, StopRequested

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

    length_ps: float
    initial_configurations: int
    frame_every: int
    timestep_fs: float = TIMESTEP_FS
    temperature_K: float = TEMPERATURE_K
    thermostat_time_fs: float = THERMOSTAT_TIME_FS
    bond_deviation_A: float = BOND_DEVIATION_A

    def __post_init__(self) -> None:
        checks = {
            "length_ps": (self.length_ps > 0, "> 0"),
            "initial_configurations": (self.initial_configurations >= 1, ">= 1"),
            "frame_every": (self.frame_every >= 1, ">= 1 step"),
            "timestep_fs": (self.timestep_fs > 0, "> 0"),
            "temperature_K": (self.temperature_K > 0, "> 0"),
            "thermostat_time_fs": (self.thermostat_time_fs > 0, "> 0"),
            "bond_deviation_A": (self.bond_deviation_A > 0, "> 0"),
        }
        for key, (ok, requirement) in checks.items():
            if not ok:
                raise ConfigError(
                    f"simulation setting {key}: {getattr(self, key)!r}, must be {requirement}"
                )
        if self.steps < 1:
            raise ConfigError(
                f"simulation setting length_ps: {self.length_ps} ps is less than one "
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
            length_ps=float(entry["length_ps"]),
            initial_configurations=int(entry["initial_configurations"]),
            frame_every=int(entry["frame_every"]),
        )

    @property
    def steps(self) -> int:
        """Number of MD steps of a simulation that stays stable."""
        return round(self.length_ps * 1000.0 / self.timestep_fs)


# -- the metrics ---------------------------------------------------------------------------------
def bonded_pairs(numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Bonds [B, 2] (i < j) of a molecule: pairs closer than r_cov(i) + r_cov(j) + 2 * 0.3 Å.

    numbers [N]; positions [N, 3] (Å). Raises InvalidDataError when there is no bond."""
    radii = covalent_radii[np.asarray(numbers)] + BOND_SKIN_A
    i, j = np.triu_indices(len(numbers), k=1)
    distance = np.linalg.norm(positions[i] - positions[j], axis=-1)
    bonded = distance < radii[i] + radii[j]
    if not bonded.any():
        raise InvalidDataError(
            f"no bonded atom pair in the initial configuration of {len(numbers)} atoms"
        )
    return np.stack([i[bonded], j[bonded]], axis=1)


def bond_lengths(positions: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Lengths [..., B] (Å) of the bonds ``pairs`` [B, 2] in positions [..., N, 3]."""
    return np.linalg.norm(positions[..., pairs[:, 0], :] - positions[..., pairs[:, 1], :], axis=-1)


def max_bond_deviation(
    positions: np.ndarray, pairs: np.ndarray, reference_lengths: np.ndarray
) -> np.ndarray:
    """Largest |length - reference| [...] (Å) over the bonds; positions [..., N, 3],
    reference_lengths [B]. Non-finite positions give inf."""
    deviation = np.abs(bond_lengths(positions, pairs) - reference_lengths).max(axis=-1)
    return np.where(np.isfinite(deviation), deviation, np.inf)


def first_unstable_frame(
    frames: np.ndarray, pairs: np.ndarray, reference_lengths: np.ndarray, threshold: float
) -> int | None:
    """Index of the first frame of frames [T, N, 3] with a bond deviating by more than
    ``threshold`` Å from its reference length, or None if every frame is stable."""
    unstable = np.flatnonzero(max_bond_deviation(frames, pairs, reference_lengths) > threshold)
    return int(unstable[0]) if unstable.size else None


def distance_histogram(frames: Sequence[np.ndarray] | np.ndarray, chunk: int = 4096) -> np.ndarray:
    """h(r) [HR_BINS]: histogram density (integrates to 1 over [1e-6, 10] Å) of all interatomic
    distances in frames [T, N, 3] (MDsim ``get_hr``), read ``chunk`` frames at a time."""
    edges = np.linspace(*HR_RANGE_A, HR_BINS + 1)
    counts = np.zeros(HR_BINS, dtype=np.int64)
    for start in range(0, len(frames), chunk):
        block = np.asarray(frames[start : start + chunk], dtype=np.float64)
        i, j = np.triu_indices(block.shape[1], k=1)
        distances = np.linalg.norm(block[:, i] - block[:, j], axis=-1)
        counts += np.histogram(distances, edges)[0]
    total = counts.sum()
    if total == 0:
        raise InvalidDataError("h(r): no interatomic distance within [1e-6, 10] Å")
    return counts / (total * np.diff(edges))


def hr_mae(h_simulation: np.ndarray, h_reference: np.ndarray) -> float:
    """h(r) MAE: mean over bins of |h_sim - h_ref| times the range, 10 Å (MDsim
    ``mae(hist_pred, hist_gt, xlim)``); 0 for identical distributions."""
    return float(np.abs(h_simulation - h_reference).mean() * HR_RANGE_A[1])


# -- one simulation ------------------------------------------------------------------------------
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
    state_path, trajectory_path = out_dir / STATE_FILE, out_dir / TRAJECTORY_FILE
    pairs = bonded_pairs(numbers, positions)
    reference_lengths = bond_lengths(reference_frames, pairs).mean(axis=0)
    atoms = Atoms(numbers=numbers, positions=positions)
    if state_path.is_file():
        with np.load(state_path) as state:
            saved = {key: state[key].copy() for key in state.files}
        atoms.set_positions(saved["positions"])
        atoms.set_momenta(saved["momenta"])
        _truncate_trajectory(trajectory_path, int(saved["frames"]))
    else:
        thermalize_momenta(atoms, settings.temperature_K, rng=np.random.default_rng(seed))
        trajectory_path.unlink(missing_ok=True)
    atoms.calc = calculator
    dynamics = _make_dynamics(atoms, settings)
    if state_path.is_file():
        thermostat = _thermostat(dynamics)
        thermostat._eta, thermostat._p_eta = saved["eta"], saved["p_eta"]
        step, frames, stable = int(saved["step"]), int(saved["frames"]), bool(saved["stable"])
        initial_energy, drift = float(saved["initial_energy"]), float(saved["drift"])
    else:
        step, frames, stable, drift = 0, 0, True, 0.0
        initial_energy = dynamics.get_conserved_energy()

    def save_frame() -> None:
        nonlocal frames, drift
        with Trajectory(trajectory_path, "a") as trajectory:
            trajectory.write(atoms)
        frames += 1
        drift = max(drift, abs(dynamics.get_conserved_energy() - initial_energy))
        save_state()

    def save_state() -> None:
        _save_state(
            state_path,
            dynamics,
            step=step,
            frames=frames,
            stable=stable,
            initial_energy=initial_energy,
            drift=drift,
        )

    if frames == 0:
        save_frame()
    with tqdm(total=settings.steps, initial=step, desc=label, unit="step", mininterval=5.0) as bar:
        while stable and step < settings.steps:
            if stop_at is not None and time.time() >= stop_at:
                save_state()
                raise StopRequested(
                    TIME_LIMIT,
                    f"at step {step} of {label}",
                    "the state is saved and rerunning the job continues the trajectory there",
                )
            dynamics.step()
            step += 1
            bar.update(1)
            deviation = max_bond_deviation(atoms.positions, pairs, reference_lengths)
            stable = bool(deviation <= settings.bond_deviation_A)
            if not stable or step % settings.frame_every == 0 or step == settings.steps:
                save_frame()

    with Trajectory(trajectory_path) as trajectory:
        frames_positions = np.stack([frame.positions for frame in trajectory])
        temperatures = [frame.get_temperature() for frame in trajectory]
    return SimulationResult(
        initial_index=initial_index,
        steps=step,
        stable=stable,
        stability_ps=step * settings.timestep_fs / 1000.0,
        hr_mae=hr_mae(distance_histogram(frames_positions), h_reference),
        frames=len(frames_positions),
        mean_temperature_K=float(np.mean(temperatures)),
        conserved_energy_drift_eV=drift,
    )


# -- a run's simulations ---------------------------------------------------------------------------
def read_frames(paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Atomic numbers [N] and positions [F, N, 3] (Å, float64) of every row of the aselmdb
    files ``paths``, in order; all rows must be the same molecule (same numbers, same order)."""
    import ase.db

    from dens.data.aselmdb_integrity import check_aselmdb

    numbers: np.ndarray | None = None
    frames: list[np.ndarray] = []
    for path in map(Path, paths):
        check_aselmdb(path)
        db = ase.db.connect(path, readonly=True)
        try:
            for row in db.select():
                if numbers is None:
                    numbers = np.array(row.numbers)
                elif not np.array_equal(row.numbers, numbers):
                    first = Atoms(numbers).get_chemical_formula()
                    raise InvalidDataError(
                        f"{path}: row {row.id} has atoms {row.formula} in another order or "
                        f"composition than the first row read ({first}); a simulation needs "
                        "one molecule"
                    )
                frames.append(np.asarray(row.positions, dtype=np.float64))
        finally:
            db.close()
    if numbers is None:
        raise InvalidDataError(f"no structure in {', '.join(map(str, paths))}")
    return numbers, np.stack(frames)


def initial_indices(n_structures: int, count: int, seed: int) -> list[int]:
    """``count`` distinct rows of ``n_structures`` drawn with numpy default_rng(seed), sorted."""
    if count > n_structures:
        raise ConfigError(
            f"simulation setting initial_configurations: {count} simulations need as many "
            f"initial configurations, the initial split has {n_structures}"
        )
    chosen = np.random.default_rng(seed).choice(n_structures, size=count, replace=False)
    return sorted(int(index) for index in chosen)


def simulate(
    calculator: Calculator,
    initial_files: Sequence[Path],
    reference_files: Sequence[Path],
    settings: SimulationSettings,
    out_dir: Path,
    seed: int,
    model: Mapping[str, Any],
    label: str = "simulation",
    stop_at: float | None = None,
) -> dict[str, Any]:
    """Run (or continue) ``settings.initial_configurations`` simulations and write
    ``out_dir/metrics.json``; returns the metrics.

    initial_files: splits the initial configurations are drawn from (the test split).
    reference_files: the reference data (every split of the dataset).
    seed: the run's training seed; seeds the choice of initial configurations and velocities.
    model: what identifies the force field (a checkpoint's SHA-256): a simulation directory
        started with another model, settings or data is moved aside and started afresh.
    stop_at: see :func:`run_simulation` (StopRequested; the next call continues).

    metrics.json: stability_ps and hr_mae (means over the simulations), simulated_ps and steps
    (totals), stable_simulations, the settings, and one entry per simulation.
    """
    out_dir = Path(out_dir)
    numbers, initial = read_frames(initial_files)
    reference_numbers, reference = read_frames(reference_files)
    if not np.array_equal(numbers, reference_numbers):
        raise InvalidDataError(
            f"{', '.join(map(str, initial_files))} and {', '.join(map(str, reference_files))} "
            f"hold different molecules ({Atoms(numbers).get_chemical_formula()} vs "
            f"{Atoms(reference_numbers).get_chemical_formula()})"
        )
    indices = initial_indices(len(initial), settings.initial_configurations, seed)
    started_with = {
        "settings": asdict(settings),
        "seed": seed,
        "model": dict(model),
        "initial": [file_fingerprint(path) for path in initial_files],
        "reference": [file_fingerprint(path) for path in reference_files],
        "initial_indices": indices,
    }
    record = out_dir / "started_with.json"
    if record.is_file() and json.loads(record.read_text()) != started_with:
        moved = move_aside(out_dir, "started with other settings, model or data")
        print(f"{out_dir} was started with other settings, model or data: moved to {moved}")
    atomic_files.make_folder(out_dir, "creating simulation folder")
    (out_dir / METRICS_FILE).unlink(missing_ok=True)
    atomic_files.write_text(
        record, json.dumps(started_with, indent=2, sort_keys=True) + "\n", "starting simulations"
    )

    h_reference = distance_histogram(reference)
    results = []
    for k, index in enumerate(indices):
        result = run_simulation(
            calculator,
            numbers,
            initial[index],
            reference,
            h_reference,
            settings,
            out_dir / f"init{k}",
            seed=[seed, k],
            initial_index=index,
            label=f"{label} {k + 1}/{len(indices)} (initial row {index})",
            stop_at=stop_at,
        )
        print(
            f"{label} {k + 1}/{len(indices)}: initial row {index}, "
            f"{'stable' if result.stable else 'collapsed'} at {result.stability_ps:g} ps, "
            f"h(r) MAE {result.hr_mae:.4f}, mean T {result.mean_temperature_K:.0f} K",
            flush=True,
        )
        results.append(result)
    metrics = {
        "stability_ps": float(np.mean([r.stability_ps for r in results])),
        "hr_mae": float(np.mean([r.hr_mae for r in results])),
        "simulated_ps": float(sum(r.stability_ps for r in results)),
        "steps": int(sum(r.steps for r in results)),
        "stable_simulations": int(sum(r.stable for r in results)),
        "settings": asdict(settings)
        | {
            "steps_per_simulation": settings.steps,
            "integrator": "ase.md.nose_hoover_chain.NoseHooverChainNVT (tchain=1)",
            "bond_skin_A": BOND_SKIN_A,
            "hr_range_A": list(HR_RANGE_A),
            "hr_bins": HR_BINS,
        },
        "reference_frames": len(reference),
        "simulations": [asdict(result) for result in results],
    }
    atomic_files.write_text(
        out_dir / METRICS_FILE, json.dumps(metrics, indent=2) + "\n", "writing metrics"
    )
    return metrics


def simulate_run(
    run_dir: Path,
    initial_files: Sequence[Path],
    reference_files: Sequence[Path],
    settings: SimulationSettings,
    seed: int,
    device: str = "cpu",
    stop_at: float | None = None,
) -> dict[str, Any]:
    """Simulate with a trained run (its checkpoints/best.pt through dens.calculator, the shared
    inference path) into ``<run_dir>/simulate/`` (see :func:`simulate`).

    The calculator's minimum-distance check is off (min_distance=0): the stability criterion is
    the bonds' (Fu et al.), and a simulation is judged by it, not stopped by another rule."""
    from dens.calculator import DeNSCalculator
    from dens.checkpoint import find_checkpoint

    checkpoint = find_checkpoint(Path(run_dir))
    calculator = DeNSCalculator(checkpoint, device=device, min_distance=0.0)
    name = calculator.experiment.get("name", str(run_dir))
    return simulate(
        calculator,
        initial_files,
        reference_files,
        settings,
        RunDirectory(Path(run_dir)).stage_dir("simulate"),
        seed,
        {"checkpoint_sha256": file_digest(checkpoint)},
        label=name,
        stop_at=stop_at,
    )
