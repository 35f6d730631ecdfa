"""Tests of dens.simulate: the stability criterion on constructed trajectories, h(r) and its
MAE, Nose-Hoover NVT with an analytic force field (temperature, the conserved quantity),
resuming a killed simulation bit for bit, a run's simulations and metrics.json from aselmdb
splits, errors that name the bad input, and `dens simulate` on an Equiformer run."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import ase.build
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io.trajectory import Trajectory

from dens.data.aselmdb import write_aselmdb
from dens.errors import ConfigError, InvalidDataError, MissingDataError
from dens.pipeline.cli import main
from dens.simulate import (
    HR_BINS,
    HR_RANGE_A,
    SimulationSettings,
    bond_lengths,
    bonded_pairs,
    distance_histogram,
    first_unstable_frame,
    hr_mae,
    run_simulation,
    simulate,
)
from dens.simulate import integration as integration_module
from dens.stopping import TIME_LIMIT, StopRequested

ETHANOL = ase.build.molecule("CH3CH2OH")  # C C O H(O) H... : 9 atoms, 8 bonds


class Springs(Calculator):
    """Harmonic springs (k eV/Å^2) between all atom pairs closer than 3 Å in ``positions``, at
    their lengths there: an analytic, conservative force field; ``pull`` (eV/Å) adds the energy
    -pull * |r_3 - r_2|, which stretches ethanol's O-H bond (atoms 2, 3)."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, positions: np.ndarray, k: float = 20.0, pull: float = 0.0) -> None:
        super().__init__()
        i, j = np.triu_indices(len(positions), 1)
        rest = np.linalg.norm(positions[i] - positions[j], axis=1)
        keep = rest < 3.0
        self.i, self.j, self.rest, self.k, self.pull = i[keep], j[keep], rest[keep], k, pull

    def calculate(self, atoms=None, properties=None, system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        x = self.atoms.positions
        vector = x[self.i] - x[self.j]
        length = np.linalg.norm(vector, axis=1)
        stretch = length - self.rest
        gradient = (self.k * stretch / length)[:, None] * vector
        forces = np.zeros_like(x)
        np.add.at(forces, self.i, -gradient)
        np.add.at(forces, self.j, gradient)
        oh = x[3] - x[2]
        forces[3] += self.pull * oh / np.linalg.norm(oh)
        forces[2] -= self.pull * oh / np.linalg.norm(oh)
        energy = 0.5 * self.k * float(stretch @ stretch) - self.pull * np.linalg.norm(oh)
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}


class Killed(Exception):
    """Stands for the process being killed."""


class DiesAfter(Springs):
    """Springs that 'kill the process' at its n-th force evaluation."""

    def __init__(self, positions: np.ndarray, calls: int) -> None:
        super().__init__(positions)
        self.calls = calls

    def calculate(self, atoms=None, properties=None, system_changes=all_changes) -> None:
        self.calls -= 1
        if self.calls < 0:
            raise Killed
        super().calculate(atoms, properties, system_changes)


def settings(length_ps: float, frame_every: int = 10, **extra) -> SimulationSettings:
    return SimulationSettings(
        length_ps=length_ps, initial_configurations=1, frame_every=frame_every, **extra
    )


def stretched_oh(frames: int, per_frame: float) -> np.ndarray:
    """Ethanol frames [frames, 9, 3] whose O-H bond grows by ``per_frame`` Å each frame."""
    oxygen, hydrogen = 2, 3
    direction = ETHANOL.positions[hydrogen] - ETHANOL.positions[oxygen]
    direction /= np.linalg.norm(direction)
    out = np.repeat(ETHANOL.positions[None], frames, axis=0)
    out[:, hydrogen] += per_frame * np.arange(frames)[:, None] * direction
    return out


def reference_of(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    frames = positions[None]
    return frames, distance_histogram(frames)


# -- the metrics ---------------------------------------------------------------------------------
def test_bonds_of_ethanol_are_its_eight_covalent_bonds():
    pairs = bonded_pairs(ETHANOL.numbers, ETHANOL.positions)
    symbols = ETHANOL.get_chemical_symbols()
    bonds = sorted("".join(sorted(symbols[i] + symbols[j])) for i, j in pairs)
    assert bonds == sorted(["CC", "CO", "HO"] + ["CH"] * 5)


def test_stability_detects_the_frame_where_a_bond_passes_half_an_angstrom():
    frames = stretched_oh(10, 0.12)  # deviations 0, 0.12, ..., 0.48, 0.60 (frame 5), ...
    pairs = bonded_pairs(ETHANOL.numbers, ETHANOL.positions)
    reference = bond_lengths(ETHANOL.positions, pairs)
    assert first_unstable_frame(frames, pairs, reference, 0.5) == 5
    assert first_unstable_frame(frames[:5], pairs, reference, 0.5) is None
    frames[2, 0] = np.nan  # a non-finite position counts as a collapse
    assert first_unstable_frame(frames, pairs, reference, 0.5) == 2


def test_h_of_r_is_a_density_and_its_mae_zero_only_for_the_same_distribution():
    frames = stretched_oh(6, 0.01)
    h = distance_histogram(frames)
    width = (HR_RANGE_A[1] - HR_RANGE_A[0]) / HR_BINS
    assert h.shape == (HR_BINS,) and h.sum() * width == pytest.approx(1.0)
    assert hr_mae(h, distance_histogram(frames.copy())) == 0.0
    assert hr_mae(distance_histogram(frames, chunk=2), h) == 0.0  # chunks add up the same
    assert hr_mae(distance_histogram(frames * 1.1), h) > 0.1  # every distance 10 % longer
    assert hr_mae(distance_histogram(frames + 0.3), h) == pytest.approx(0.0, abs=1e-12)


# -- simulations with an analytic force field ----------------------------------------------------
def test_nose_hoover_holds_500_k_and_its_invariant_converges_with_the_time_step(tmp_path):
    frames, h = reference_of(ETHANOL.positions)
    args = (ETHANOL.numbers, ETHANOL.positions, frames, h)
    result = run_simulation(
        Springs(ETHANOL.positions), *args, settings(0.6, frame_every=20), tmp_path / "a", seed=0
    )
    assert result.stable and result.steps == 1200 and result.stability_ps == 0.6
    assert result.frames == 61
    assert 430.0 < result.mean_temperature_K < 570.0
    kinetic = 1.5 * len(ETHANOL) * ase.units.kB * 500.0  # ~0.58 eV
    drifts = [
        run_simulation(
            Springs(ETHANOL.positions),
            *args,
            settings(0.1, timestep_fs=dt),
            tmp_path / f"dt{dt}",
            seed=0,
        ).conserved_energy_drift_eV
        for dt in (0.5, 0.25)
    ]
    assert drifts[0] < 0.05 * kinetic
    assert drifts[1] < drifts[0] / 2.5  # a second-order integrator: ~4x smaller


def test_a_molecule_torn_apart_is_unstable_from_the_step_its_bond_breaks(tmp_path):
    frames, h = reference_of(ETHANOL.positions)
    result = run_simulation(
        Springs(ETHANOL.positions, pull=40.0),
        ETHANOL.numbers,
        ETHANOL.positions,
        frames,
        h,
        settings(0.5),
        tmp_path,
        seed=0,
    )
    assert not result.stable and 0 < result.steps < 1000
    assert result.stability_ps == result.steps * 0.5 / 1000
    with Trajectory(tmp_path / "trajectory.traj") as trajectory:
        saved = np.stack([atoms.positions for atoms in trajectory])
    pairs = bonded_pairs(ETHANOL.numbers, ETHANOL.positions)
    reference = bond_lengths(ETHANOL.positions, pairs)
    # the simulation stopped at the collapse, saved as the last frame
    assert first_unstable_frame(saved, pairs, reference, 0.5) == len(saved) - 1
    assert len(saved) == result.steps // 10 + 2


@pytest.mark.parametrize("kill", ["during a step", "between frame and state"])
def test_a_killed_simulation_resumes_the_same_trajectory(tmp_path, monkeypatch, kill):
    frames, h = reference_of(ETHANOL.positions)
    args = (ETHANOL.numbers, ETHANOL.positions, frames, h, settings(0.05))
    whole = run_simulation(Springs(ETHANOL.positions), *args, tmp_path / "whole", seed=3)

    if kill == "during a step":
        with pytest.raises(Killed):
            run_simulation(DiesAfter(ETHANOL.positions, 47), *args, tmp_path / "killed", seed=3)
    else:  # the third frame is appended to the trajectory, the state is not saved
        save_state = integration_module._save_state
        calls = iter(range(100))

        def dies_on_the_third(*a, **k):
            if next(calls) == 2:
                raise Killed
            save_state(*a, **k)

        monkeypatch.setattr(integration_module, "_save_state", dies_on_the_third)
        with pytest.raises(Killed):
            run_simulation(Springs(ETHANOL.positions), *args, tmp_path / "killed", seed=3)
        monkeypatch.setattr(integration_module, "_save_state", save_state)
        with Trajectory(tmp_path / "killed" / "trajectory.traj") as trajectory:
            assert len(trajectory) == 3  # one frame more than the saved state knows
    with np.load(tmp_path / "killed" / "state.npz") as state:
        assert 0 < int(state["step"]) < 100
    resumed = run_simulation(Springs(ETHANOL.positions), *args, tmp_path / "killed", seed=3)
    assert resumed == whole
    with (
        Trajectory(tmp_path / "whole" / "trajectory.traj") as a,
        Trajectory(tmp_path / "killed" / "trajectory.traj") as b,
    ):
        assert len(a) == len(b) == 11
        for x, y in zip(a, b, strict=True):
            assert np.array_equal(x.positions, y.positions)
            assert np.array_equal(x.get_momenta(), y.get_momenta())


def test_a_simulation_stopped_at_its_time_limit_continues_the_same_trajectory(
    tmp_path, monkeypatch
):
    """stop_at (a Slurm job ending itself before its limit, dens.pipeline.slurm) saves the state
    mid-way between frames and exits with status 75; the next call continues bit for bit."""
    frames, h = reference_of(ETHANOL.positions)
    args = (ETHANOL.numbers, ETHANOL.positions, frames, h, settings(0.05))
    whole = run_simulation(Springs(ETHANOL.positions), *args, tmp_path / "whole", seed=3)
    checks = iter(range(10_000))  # the clock passes stop_at at the 48th check (before step 48)
    clock = SimpleNamespace(time=lambda: 2.0 if next(checks) >= 47 else 0.0)
    monkeypatch.setattr(integration_module, "time", clock)
    with pytest.raises(StopRequested) as stopped:
        run_simulation(Springs(ETHANOL.positions), *args, tmp_path / "cut", seed=3, stop_at=1.0)
    assert stopped.value.code == 75 and stopped.value.reason == TIME_LIMIT
    with np.load(tmp_path / "cut" / "state.npz") as state:
        assert (int(state["step"]), int(state["frames"])) == (47, 5)
    monkeypatch.undo()
    resumed = run_simulation(Springs(ETHANOL.positions), *args, tmp_path / "cut", seed=3)
    assert resumed == whole
    with (
        Trajectory(tmp_path / "whole" / "trajectory.traj") as a,
        Trajectory(tmp_path / "cut" / "trajectory.traj") as b,
    ):
        for x, y in zip(a, b, strict=True):
            assert np.array_equal(x.positions, y.positions)
            assert np.array_equal(x.get_momenta(), y.get_momenta())


# -- a run's simulations from aselmdb splits -----------------------------------------------------
def write_split(path: Path, frames: np.ndarray, numbers: np.ndarray = ETHANOL.numbers) -> Path:
    def structures():
        for positions in frames:
            atoms = Atoms(numbers=numbers, positions=positions)
            zeros = np.zeros((len(numbers), 3))
            atoms.calc = SinglePointCalculator(atoms, energy=0.0, forces=zeros)
            yield atoms

    write_aselmdb(path, structures())
    return path


@pytest.fixture
def splits(tmp_path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    shaken = ETHANOL.positions + 0.02 * rng.standard_normal((12, len(ETHANOL), 3))
    return {
        "train": write_split(tmp_path / "data" / "train.aselmdb", shaken[:8]),
        "test": write_split(tmp_path / "data" / "test.aselmdb", shaken[8:]),
    }


def test_simulate_writes_metrics_and_moves_a_run_with_other_settings_aside(tmp_path, splits):
    calculator = Springs(ETHANOL.positions)
    two = SimulationSettings(length_ps=0.01, initial_configurations=2, frame_every=5)
    files = ([splits["test"]], [splits["train"], splits["test"]])
    out = tmp_path / "run" / "simulate"
    metrics = simulate(calculator, *files, two, out, seed=0, model={"sha256": "a"})
    assert json.loads((out / "metrics.json").read_text()) == metrics
    runs = metrics["simulations"]
    assert len(runs) == 2 and len({r["initial_index"] for r in runs}) == 2
    assert metrics["steps"] == 40 and metrics["simulated_ps"] == pytest.approx(0.02)
    assert metrics["stability_ps"] == pytest.approx(0.01) and metrics["stable_simulations"] == 2
    assert metrics["hr_mae"] == pytest.approx(np.mean([r["hr_mae"] for r in runs]))
    assert metrics["reference_frames"] == 12 and metrics["settings"]["length_ps"] == 0.01
    assert (out / "init1" / "trajectory.traj").is_file()

    again = simulate(calculator, *files, two, out, seed=0, model={"sha256": "a"})
    assert again == metrics  # finished simulations are read back, not run again
    assert not list(out.parent.glob("simulate.previous-*"))
    simulate(calculator, *files, two, out, seed=0, model={"sha256": "b"})  # another model
    (moved,) = out.parent.glob("simulate.previous-*")
    assert "other settings, model or data" in (moved / "MOVED_ASIDE.txt").read_text()


def test_bad_inputs_are_named(tmp_path, splits):
    calculator = Springs(ETHANOL.positions)
    one = settings(0.01)
    with pytest.raises(ConfigError, match="initial_configurations: 5 .* has 4"):
        simulate(
            calculator,
            [splits["test"]],
            [splits["train"]],
            SimulationSettings(length_ps=0.01, initial_configurations=5, frame_every=5),
            tmp_path / "a",
            seed=0,
            model={},
        )
    water = write_split(
        tmp_path / "water.aselmdb",
        np.zeros((2, 3, 3)) + [[0, 0, 0], [0.96, 0, 0], [0, 0.96, 0]],
        np.array([8, 1, 1]),
    )
    with pytest.raises(InvalidDataError, match="water.aselmdb.*different molecules"):
        simulate(calculator, [splits["test"]], [water], one, tmp_path / "b", seed=0, model={})
    with pytest.raises(MissingDataError, match="nowhere.aselmdb"):
        simulate(calculator, [tmp_path / "nowhere.aselmdb"], [water], one, tmp_path / "c", 0, {})
    with pytest.raises(ConfigError, match="length_ps: 0.0001 ps is less than one 0.5 fs step"):
        settings(0.0001)
    with pytest.raises(ConfigError, match=r"simulation\.md17\.frame_every must be >= 1, got 0"):
        settings(1.0, frame_every=0)
    with pytest.raises(ConfigError, match=r"config/scales/custom\.yaml: no simulation\.md17"):
        SimulationSettings.from_scale({"simulation": {}}, "custom")


# -- the command, through the shared inference path ----------------------------------------------
def test_dens_simulate_runs_an_equiformer_run(tmp_path, splits, capsys, one_torch_thread):
    """An ethanol run of the registered Equiformer (smoke preset, untrained weights) simulated
    for the smoke scale's 20 steps through `dens simulate` (DeNSCalculator)."""
    from dens.checkpoint import FORMAT_VERSION, save_checkpoint
    from dens.models import build_model
    from dens.normalization import NUM_ELEMENTS, Normalizer
    from dens.pipeline.registry import load_registry

    experiment = load_registry({"scale": "smoke"}).resolve("md17-ethanol/equiformer-l2")
    model = build_model(experiment)
    counts = torch.zeros(2, NUM_ELEMENTS)
    counts[:, 6], counts[:, 1], counts[:, 8] = 2, 6, 1
    energies = torch.tensor([-970.0, -971.0], dtype=torch.float64)
    normalizer = Normalizer.fit(energies, counts, "mean")
    best = {
        "format_version": FORMAT_VERSION,
        "kind": "best",
        "experiment": experiment,
        "epoch": 1,
        "step": 1,
        "normalizer": normalizer.to_dict(),
        "num_parameters": 1,
        "model": model.state_dict(),
        "weights": "model",
        "val": {"energy_mae_meV": 0.0, "forces_mae_meV_per_A": 0.0},
    }
    run = tmp_path / "run"
    save_checkpoint(best, run / "checkpoints" / "best.pt")
    command = ["simulate", "md17-ethanol/equiformer-l2", "--scale", "smoke", "--run-dir", str(run)]
    files = ["--initial", str(splits["test"]), str(splits["train"]), str(splits["test"])]
    assert main(command + ["--device", "cpu"] + files) == 0
    metrics = json.loads((run / "simulate" / "metrics.json").read_text())
    assert metrics["settings"]["length_ps"] == 0.01
    assert metrics["steps"] == metrics["simulations"][0]["steps"] <= 20
    assert "md17-ethanol/equiformer-l2: stability" in capsys.readouterr().out
    other = ["simulate", "oc20-2m/eqv2-e12", "--scale", "smoke", "--run-dir", str(run)]
    assert main(other + files) == 2
    assert "simulations are of MD17 molecules" in capsys.readouterr().err


# -- Table 10 --------------------------------------------------------------------------------------
def test_table10_reads_the_simulations_metrics_beside_the_papers(pipeline_copy):
    from dens.pipeline import paths
    from dens.pipeline.registry import load_registry
    from dens.pipeline.tables import write_table
    from dens.pipeline.tables.read import table_inputs

    registry = load_registry({"scale": "smoke"}, root=pipeline_copy)
    inputs = table_inputs(registry, "table10")
    # smoke trains aspirin and ethanol of Table 10's four molecules (md17_molecules): 2 x 2 rows
    simulated_molecules = {
        part.removeprefix("md17-") for path in inputs for part in path.parts if "md17-" in part
    }
    assert simulated_molecules == {"aspirin", "ethanol"}
    assert sum(path.parent.name == "simulate" for path in inputs) == 4
    for index, path in enumerate(inputs):
        values = (
            {"stability_ps": 0.005 + index / 1000, "hr_mae": 0.25 + index / 100}
            if path.parent.name == "simulate"
            else {"energy_mae_meV": 1.0, "forces_mae_meV_per_A": 2.0}
        )
        (pipeline_copy / path).parent.mkdir(parents=True, exist_ok=True)
        (pipeline_copy / path).write_text(json.dumps(values))
    csv_path, md_path, _ = write_table(registry, "table10", pipeline_copy / "out")
    rows = list(csv.DictReader(csv_path.open()))
    ethanol = {
        row["column"]: row
        for row in rows
        if row["row"] == "Equiformer (Lmax=2) + DeNS" and row["molecule"] == "ethanol"
    }
    simulated = pipeline_copy / paths.run("smoke", "md17-ethanol/equiformer-l2-dens", 0).metrics(
        "simulate"
    )
    expected = json.loads(simulated.read_text())
    assert float(ethanol["stability"]["ours"]) == expected["stability_ps"]
    assert float(ethanol["h(r)"]["ours"]) == expected["hr_mae"]
    assert ethanol["stability"]["paper"] == "300" and ethanol["h(r)"]["paper"] == "0.09"
    assert ethanol["stability"]["status"] == "single seed"
    assert "Ours (smoke): 1 simulation(s) per run, each at most 0.01 ps" in md_path.read_text()
