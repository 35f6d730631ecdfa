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

The package, by concern: ``settings`` (SimulationSettings and the constants of Fu et al.),
``observables`` (bonds, the stability criterion, h(r)), ``integration`` (one simulation, saved
and resumed) and ``run`` (a run's simulations and metrics.json); every name is importable from
``dens.simulate`` itself.
"""

from dens.simulate.integration import (
    STATE_FILE,
    TRAJECTORY_FILE,
    SimulationResult,
    run_simulation,
)
from dens.simulate.observables import (
    bond_lengths,
    bonded_pairs,
    distance_histogram,
    first_unstable_frame,
    hr_mae,
    max_bond_deviation,
)
from dens.simulate.run import initial_indices, read_frames, simulate, simulate_run
from dens.simulate.settings import (
    BOND_DEVIATION_A,
    BOND_SKIN_A,
    HR_BINS,
    HR_RANGE_A,
    TEMPERATURE_K,
    THERMOSTAT_TIME_FS,
    TIMESTEP_FS,
    SimulationSettings,
)

__all__ = [
    "BOND_DEVIATION_A",
    "BOND_SKIN_A",
    "HR_BINS",
    "HR_RANGE_A",
    "STATE_FILE",
    "TEMPERATURE_K",
    "THERMOSTAT_TIME_FS",
    "TIMESTEP_FS",
    "TRAJECTORY_FILE",
    "SimulationResult",
    "SimulationSettings",
    "bond_lengths",
    "bonded_pairs",
    "distance_histogram",
    "first_unstable_frame",
    "hr_mae",
    "initial_indices",
    "max_bond_deviation",
    "read_frames",
    "run_simulation",
    "simulate",
    "simulate_run",
]
