"""A run's simulations (dens.simulate): the initial configurations and the reference data, the
record of what the simulations started with, and metrics.json."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from dens import atomic_files
from dens.atomic_files import file_digest, file_fingerprint
from dens.errors import ConfigError, InvalidDataError
from dens.layout import METRICS_FILE, RunDirectory
from dens.runs import move_aside
from dens.simulate.integration import SimulationResult, run_simulation
from dens.simulate.observables import distance_histogram
from dens.simulate.settings import BOND_SKIN_A, HR_BINS, HR_RANGE_A, SimulationSettings


def read_frames(paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Atomic numbers [N] and positions [F, N, 3] (Å, float64) of every row of the splits
    ``paths`` (split folders or aselmdb files), in order; all rows must be the same molecule
    (same numbers, same order)."""
    import ase.db

    from dens.data.split_folder import check_split

    numbers: np.ndarray | None = None
    frames: list[np.ndarray] = []
    shards = [shard for split in map(Path, paths) for shard in check_split(split)]
    for path in shards:
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
            f"simulation.md17.initial_configurations: {count} simulations need as many "
            f"initial configurations, the initial split has {n_structures}"
        )
    chosen = np.random.default_rng(seed).choice(n_structures, size=count, replace=False)
    return sorted(int(index) for index in chosen)


def _read_molecule(
    initial_files: Sequence[Path], reference_files: Sequence[Path]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Atomic numbers [N], initial configurations [F, N, 3] and reference frames [R, N, 3] of
    one molecule (InvalidDataError when the two sets of files hold different ones)."""
    numbers, initial = read_frames(initial_files)
    reference_numbers, reference = read_frames(reference_files)
    if not np.array_equal(numbers, reference_numbers):
        raise InvalidDataError(
            f"{', '.join(map(str, initial_files))} and {', '.join(map(str, reference_files))} "
            f"hold different molecules ({Atoms(numbers).get_chemical_formula()} vs "
            f"{Atoms(reference_numbers).get_chemical_formula()})"
        )
    return numbers, initial, reference


def _record_start(out_dir: Path, started_with: dict[str, Any]) -> None:
    """Write ``out_dir/started_with.json``, first moving ``out_dir`` aside when it was started
    with something else; a previous metrics.json is removed."""
    record = out_dir / "started_with.json"
    if record.is_file() and json.loads(record.read_text()) != started_with:
        moved = move_aside(out_dir, "started with other settings, model or data")
        print(f"{out_dir} was started with other settings, model or data: moved to {moved}")
    atomic_files.make_folder(out_dir, "creating simulation folder")
    (out_dir / METRICS_FILE).unlink(missing_ok=True)
    atomic_files.write_text(
        record, json.dumps(started_with, indent=2, sort_keys=True) + "\n", "starting simulations"
    )


def _metrics(
    settings: SimulationSettings, results: list[SimulationResult], reference_frames: int
) -> dict[str, Any]:
    """metrics.json: means and totals over the simulations, the settings, one entry each."""
    return {
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
        "reference_frames": reference_frames,
        "simulations": [asdict(result) for result in results],
    }


def _run_each(
    calculator: Calculator,
    numbers: np.ndarray,
    initial: np.ndarray,
    reference: np.ndarray,
    settings: SimulationSettings,
    out_dir: Path,
    seed: int,
    indices: list[int],
    label: str,
    stop_at: float | None,
) -> list[SimulationResult]:
    """Run (or continue) the simulation from each initial row ``indices`` into
    ``out_dir/init<k>``, printing a line per simulation."""
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
    return results


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
    numbers, initial, reference = _read_molecule(initial_files, reference_files)
    indices = initial_indices(len(initial), settings.initial_configurations, seed)
    _record_start(
        out_dir,
        {
            "settings": asdict(settings),
            "seed": seed,
            "model": dict(model),
            "initial": [file_fingerprint(path) for path in initial_files],
            "reference": [file_fingerprint(path) for path in reference_files],
            "initial_indices": indices,
        },
    )
    results = _run_each(
        calculator, numbers, initial, reference, settings, out_dir, seed, indices, label, stop_at
    )
    metrics = _metrics(settings, results, len(reference))
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
