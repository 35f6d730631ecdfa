# Helpers shared by the rules (all functions live here, as `snakemake --lint` asks): input files of
# a job (paths come from dens.pipeline.paths, the only place that turns scale, experiment and split
# into a path) and cluster resources per job (JOB_SIZES, set once per kind of job).
#
# The shell commands call `python -m dens`, the package from this checkout (the working directory),
# so the conda environment (envs/dens.yaml) needs only the dependencies. The command is
# written out in each shell directive rather than held in a variable, which lint would flag.
import json
import math
import shlex

from dataclasses import dataclass

from dens.config_files import read_yaml
from dens.data.download.catalog import load_catalog_with
from dens.data.download.content import EXTRACTABLE_FORMATS
from dens.data.oc_convert import frames_per_job, group_count, published_frames
from dens.pipeline import paths
from dens.pipeline.curves import curve_inputs, curve_tables
from dens.pipeline.figures import FIGURES
from dens.pipeline.published import in_all as published_in_all
from dens.pipeline.published import load_published
from dens.pipeline.published import split_files as published_split_files
from dens.pipeline.tables.published import table_inputs as published_table_inputs
from dens.pipeline.tables.read import table_inputs

GPUS_PER_NODE = 8  # V100 nodes of the paper's cluster; multi-GPU runs span ceil(gpus / 8) nodes
ENV = "../../envs/dens.yaml"  # conda environment of every rule (relative to workflow/rules/)


@dataclass(frozen=True)
class JobSize:
    """What a job asks of the cluster: memory (MB), a time limit (minutes, capped by
    max_job_hours: job_minutes) and whether it runs on a GPU."""

    mem_mb: int
    minutes: int
    gpu: bool = False


JOB_SIZES = {  # kind of job: (at the CPU scales mini and smoke, at the paper scale)
    "download": (JobSize(2000, 60 * 24), JobSize(2000, 60 * 24)),
    "extract": (JobSize(2000, 60 * 12), JobSize(2000, 60 * 12)),
    "convert": (JobSize(4000, 120), JobSize(8000, 60 * 12)),
    "prepare": (JobSize(4000, 120), JobSize(16000, 60 * 4)),
    "import_checkpoint": (JobSize(4000, 60), JobSize(16000, 60)),
    "evaluate": (JobSize(8000, 60), JobSize(8000, 60 * 12, gpu=True)),
    "submission": (JobSize(4000, 60), JobSize(32000, 60 * 24, gpu=True)),
    "relax": (JobSize(16000, 60), JobSize(16000, 60 * 24, gpu=True)),
    "simulate": (JobSize(8000, 60), JobSize(8000, 60 * 24, gpu=True)),
    "table": (JobSize(1000, 10), JobSize(1000, 10)),
    "published_table": (JobSize(4000, 10), JobSize(4000, 10)),
    "figure": (JobSize(2000, 10), JobSize(2000, 10)),
}
"""Training jobs are sized per experiment instead (train_resource: the paper's GPUs and hours)."""


# Which column of JOB_SIZES (and which training resources) jobs ask for: the scale's job_sizes,
# by default the paper's with GPUs and the CPU scales' without (the rehearsal: the paper's sizes
# without GPUs).
PAPER_JOB_SIZES = REGISTRY.scale.get("job_sizes", "paper" if REGISTRY.scale["gpus"] else "cpu") == "paper"


def job_resources(kind):
    """The resources of a job of ``kind`` (JOB_SIZES) at this scale, for a rule's ``resources:``
    (``**job_resources(kind)``): mem_mb (at most max_job_mem_mb: job_mem_mb), runtime and, for a
    kind that runs on a GPU at the paper scale, gres (empty without GPUs)."""
    cpu, gpu = JOB_SIZES[kind]
    size = gpu if PAPER_JOB_SIZES else cpu
    resources = {"mem_mb": job_mem_mb(size.mem_mb), "runtime": job_minutes(size.minutes)}
    if gpu.gpu:
        resources["gres"] = "gpu:1" if size.gpu and REGISTRY.scale["gpus"] else ""
    return resources


def job_mem_mb(mem_mb):
    """A job's memory request: ``mem_mb``, capped at the configured max_job_mem_mb (the largest
    node's; a cluster refuses a job no node can hold)."""
    most = REGISTRY.options["max_job_mem_mb"]
    return mem_mb if most is None else min(mem_mb, most)


def split_files(role):
    """Input function: the experiment's split files with ``role`` (config/datasets.yaml)."""
    return lambda wildcards: [
        str(path) for path in paths.experiment_split_files(REGISTRY, wildcards.experiment, role)
    ]


def resolved_settings(wildcards):
    """The experiment at this scale and seed as canonical JSON: a change re-runs the job (params
    trigger)."""
    return json.dumps(REGISTRY.resolve(wildcards.experiment, wildcards.seed), sort_keys=True)


# MD17 molecules, most atoms first (aspirin 21 ... malonaldehyde 9): the order of their jobs' cost.
MD17_LARGEST_FIRST = (
    "aspirin",
    "naphthalene",
    "salicylic_acid",
    "toluene",
    "benzene",
    "uracil",
    "ethanol",
    "malonaldehyde",
)


def longest_first(wildcards):
    """Priority of a dataset's or an experiment's job, higher for the longer ones, so that on few
    cores the long jobs start first and the end of the run is short jobs: OC20/OC22 (minutes per
    run at the CPU scales) above every MD17 job; MD17 by molecule size, and of one molecule the
    Lmax=3 model above the others. Other datasets: 0."""
    dataset = getattr(wildcards, "dataset", None)
    lmax3 = False
    if dataset is None:
        experiment = REGISTRY.experiment(wildcards.experiment)
        dataset, lmax3 = experiment["dataset"], experiment["model"].get("preset") == "l3"
    info = REGISTRY.datasets[dataset]
    if info["family"] in ("oc20", "oc22"):
        return 2 * len(MD17_LARGEST_FIRST) + 2
    if info.get("molecule") not in MD17_LARGEST_FIRST:
        return 0
    return 2 * (len(MD17_LARGEST_FIRST) - MD17_LARGEST_FIRST.index(info["molecule"])) + lmax3


def evaluate_option(wildcards, input):
    """`dens train --evaluate SPLIT...` where the training job also scores the run."""
    if not EVALUATE_IN_TRAIN_JOB:
        return ""
    return "--evaluate " + " ".join(shlex.quote(path) for path in input.evaluate) + " "


def cli_options():
    """Options every `dens` job gets so it resolves the same configuration as the DAG (a run's
    training seed comes from its path: --seed {wildcards.seed})."""
    options = f"--scale {SCALE}"
    if REGISTRY.options["data_seed"] is not None:
        options += f" --data-seed {REGISTRY.options['data_seed']}"
    for path in REGISTRY.options["extra_experiments"]:
        options += f" --extra-experiments {path}"
    if REGISTRY.options["catalog"] is not None:
        options += f" --catalog {shlex.quote(REGISTRY.options['catalog'])}"
    return options


def seeds_options():
    """``cli_options`` for the jobs that read every seed's runs (tables, curves, report): with the
    configured training seeds, which these commands cannot tell from a path."""
    return cli_options() + " --seeds " + " ".join(str(seed) for seed in REGISTRY.options["seeds"])


def gpu_resources(experiment, hours_factor=1.0):
    """Slurm resources of a GPU job sized like the paper's run (none at CPU scales)."""
    resources = REGISTRY.experiment(experiment)["resources"]
    paper_runtime = math.ceil(60 * resources["runtime_hours"] * hours_factor)
    if not REGISTRY.scale["gpus"]:  # one CPU task; the paper's memory and time with job_sizes paper
        return {
            "mem_mb": job_mem_mb(64000 if PAPER_JOB_SIZES else 4000),
            "nodes": 1,
            "tasks": 1,
            "tasks_per_gpu": 1,
            "gres": "",
            "runtime": paper_runtime if PAPER_JOB_SIZES else 60 * 24,
            "mpi": None,
        }
    gpus = resources["gpus"]
    return {
        "mem_mb": job_mem_mb(64000),
        "nodes": math.ceil(gpus / GPUS_PER_NODE),
        "tasks": gpus,
        "tasks_per_gpu": 1,  # one training process per GPU
        "gres": f"gpu:{min(gpus, GPUS_PER_NODE)}",
        "runtime": paper_runtime,
        # Set (multi-GPU): the Slurm executor runs the job's shell in the allocation instead of
        # wrapping it in a one-task srun, and the shell starts the processes (train_launcher).
        # None drops the resource.
        "mpi": "srun" if gpus > 1 else None,
    }


def train_resource(name, hours_factor=1.0):
    return lambda wildcards: gpu_resources(wildcards.experiment, hours_factor)[name]


def job_minutes(minutes):
    """A job's time limit: ``minutes``, capped at the configured max_job_hours (a cluster refuses
    longer jobs; training and simulation jobs continue in requeued jobs, dens.pipeline.slurm)."""
    hours = REGISTRY.options["max_job_hours"]
    return minutes if hours is None else min(minutes, max(1, math.floor(60 * hours)))


def continuation_margin_s(minutes):
    """How long before its time limit a job stops to requeue itself: a quarter of the limit, at
    most 10 minutes (saving a checkpoint takes seconds; the margin also covers the last step)."""
    return min(600, 15 * minutes)


def continuation_option(wildcards, resources):
    """`dens train` option that ends the job before its limit and requeues it (dens.pipeline.slurm), when a
    limit is configured; nothing otherwise."""
    if REGISTRY.options["max_job_hours"] is None:
        return ""
    return f"--continue-before-time-limit {continuation_margin_s(resources.runtime)} "


UNLESS_REQUEUED = (
    '{ [ -n "${SLURM_JOB_ID:-}" ] && scontrol show job "$SLURM_JOB_ID" | grep "Restarts=[1-9]" '
    ">/dev/null; } || "
)
"""Shell prefix of a command run only in a job's first start (not in a requeued continuation):
Slurm's SLURM_RESTART_COUNT does not reach the job step, scontrol's Restarts does."""


def time_plan(wildcards):
    """The dry run's line per training job: its time limit and, at GPU scales, how many
    continuations the paper's wall time (config/experiments.yaml resources) implies at that
    limit."""
    hours = REGISTRY.options["max_job_hours"]
    needed = gpu_resources(wildcards.experiment)["runtime"]
    asked = job_minutes(needed)
    plan = f"asks {asked} min per job"
    if hours is None:
        return plan
    if not REGISTRY.scale["gpus"]:
        return plan + f" (max_job_hours={hours}), continuing in requeued jobs until done"
    continuations = max(0, math.ceil(needed / asked) - 1)
    return plan + (
        f"; the paper's wall time, {needed} min, means {continuations} continuation(s) at "
        f"max_job_hours={hours}"
    )


def train_launcher(wildcards, resources, threads):
    """What starts `python -m dens train`: for a multi-GPU job, srun with one task per GPU across
    the job's nodes, placed as the allocation says (--ntasks-per-gpu=1, which srun inherits and
    which rules out --ntasks-per-node); dens.distributed reads the step's SLURM_PROCID,
    SLURM_STEP_NUM_TASKS, SLURM_LOCALID and SLURM_STEP_NODELIST, and the other tasks stop when
    one fails. Else nothing: one plain process (on Slurm the executor runs it in a one-task
    step)."""
    if resources.tasks == 1:
        return ""
    return f"srun --ntasks={resources.tasks} --cpus-per-task={threads} --kill-on-bad-exit=1 "


# Data (data.smk): downloaded archives (config/archives.yaml) and what a dataset is made from.
# With config `catalog` (a scale of catalog: stand_in, the rehearsal), its generated archives in
# place of the published ones of the same names (checked at DAG time: load_registry).
ARCHIVES = load_catalog_with(REGISTRY.options["catalog"], root=Path(workflow.basedir))
PUBLISHED_FRAMES = published_frames(Path(workflow.basedir), REGISTRY.options["catalog"])
DOWNLOADS = str(paths.downloads_dir(SCALE))
# `dens data download --mirror URL` where config `mirror` is set. A global of the shell command,
# not a param: the mirror says where a file comes from, not what it is (its checksum does), so
# changing it reruns nothing.
MIRROR = REGISTRY.options["mirror"]
MIRROR_OPTION = "" if MIRROR is None else f"--mirror {shlex.quote(MIRROR)} "
# The stand-in catalog's `--catalog PATH` for download and extract jobs (a param: the catalog says
# what a file is, its checksum and sizes, so naming another one redoes these jobs).
CATALOG = REGISTRY.options["catalog"]
CATALOG_OPTION = "" if CATALOG is None else f"--catalog {shlex.quote(CATALOG)} "


def archive_file(name):
    return f"{DOWNLOADS}/{name}.{ARCHIVES[name].format}"


def convert_groups(archive):
    """G, the convert_group jobs of an archive: its published frames
    (config/archives.yaml) over config convert_frames_per_job, by default what one job converts
    in half its time limit (dens.data.oc_convert.frames_per_job)."""
    per_job = REGISTRY.options["convert_frames_per_job"] or frames_per_job(
        REGISTRY.options["max_job_hours"], JOB_SIZES["convert"][1].minutes
    )
    return group_count(sum(PUBLISHED_FRAMES.get(archive, {}).values()), per_job)


def dataset_inputs(wildcards):
    """What a dataset is made from at a scale whose source is `download`: the group records of
    its extracted archives' convert_group jobs (OC20/OC22), or an archive used
    as is (MD17's npz); nothing when generated."""
    if REGISTRY.data_settings(wildcards.dataset)["source"] != "download":
        return []
    directory = paths.dataset(SCALE, wildcards.dataset)
    return [
        str(directory.group_record(name, group))
        if archive.format in EXTRACTABLE_FORMATS
        else archive_file(name)
        for name, archive in ARCHIVES.items()
        if wildcards.dataset in archive.dataset and not archive.optional
        for group in (range(convert_groups(name)) if archive.format in EXTRACTABLE_FORMATS else [0])
    ]


def convert_group_settings(wildcards):
    return json.dumps(REGISTRY.data_settings(wildcards.dataset), sort_keys=True)


def reference_files(wildcards):
    """Files a training job reads besides its splits: the published linear energy reference of
    its experiment (optim.energy_reference_file, an .npz in the downloads folder, fetched by
    download_archive; config/archives.yaml reference_for); none where the scale sets it null."""
    path = REGISTRY.resolve(wildcards.experiment, wildcards.seed)["optim"].get(
        "energy_reference_file"
    )
    return [] if path is None else [path]


# Tables (tables.smk).
def table_metrics(wildcards):
    """Metrics files of the cells that can be measured (not those of model families or stages
    not implemented yet: they say "not run"), and the evaluation server's files put in so far."""
    return [str(path) for path in table_inputs(REGISTRY, wildcards.table)]


def table_settings(wildcards):
    """Settings tables (7, 8, 9) show configured values: a config change re-runs them."""
    table = REGISTRY.table(wildcards.table)
    if table["kind"] != "settings":
        return ""
    columns = [REGISTRY.resolve(column["experiment"]) for column in table["columns"]]
    return json.dumps(columns, sort_keys=True)


# Figures (figures.smk): each figure's structures come from its datasets' training splits.
def figure_structures(wildcards):
    datasets = FIGURES[wildcards.figure][0]
    return [
        str(paths.dataset(SCALE, dataset).split(REGISTRY.splits(dataset, "train")[0]))
        for dataset in datasets
    ]


# Published checkpoints (published.smk): config/published.yaml, checked at DAG time.
try:
    PUBLISHED = load_published(REGISTRY)
except ConfigError as error:
    raise WorkflowError(f"invalid configuration: {error}") from None
PUBLISHED_IN_ALL = published_in_all(REGISTRY)


def published_dir(wildcards):
    return str(paths.published_run(SCALE, wildcards.published).path)


def published_checkpoint(wildcards):
    return PUBLISHED.checkpoints[wildcards.published]


def published_splits(role):
    """Input function: a published checkpoint's split files with ``role`` (evaluate, relax_val,
    test)."""
    return lambda wildcards: [
        str(path)
        for path in published_split_files(REGISTRY, published_checkpoint(wildcards), role)
    ]


def published_reference(wildcards):
    """The linear energy reference a published checkpoint needs (config/published.yaml
    energy_reference), downloaded at every scale; none where it needs none."""
    name = published_checkpoint(wildcards).energy_reference
    return [] if name is None else [archive_file(name)]


def published_reference_option(wildcards, input):
    if not input.reference:
        return ""
    return f"--energy-reference-file {shlex.quote(input.reference[0])} "


def published_files(kind):
    """Every published checkpoint's file of ``kind`` (dens.layout.PUBLISHED_FILES) that its entry
    asks for."""
    wanted = {"relax": "relax", "relax_submission": "relax", "test": "submission"}.get(
        kind, "submission" if kind == "submission" else None
    )
    return [
        str(paths.published_run(SCALE, name).published(kind))
        for name, checkpoint in PUBLISHED.checkpoints.items()
        if wanted is None or getattr(checkpoint, wanted)
    ]
