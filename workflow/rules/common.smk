# Helpers shared by the rules: paths of a run's outputs and cluster resources per job.
import json
import math

GPUS_PER_NODE = 8  # V100 nodes of the paper's cluster; multi-GPU runs span ceil(gpus / 8) nodes


def run_dir(experiment):
    return f"{RESULTS}/runs/{experiment}"


def dataset_dir(dataset):
    return f"{RESULTS}/data/{dataset}"


def dataset_files(dataset):
    """The prepared splits of a dataset (aselmdb) and its provenance record."""
    info = REGISTRY.dataset(dataset)
    files = [f"{dataset_dir(dataset)}/{split}.aselmdb" for split in info["splits"]]
    return files + [f"{dataset_dir(dataset)}/provenance.json"]


def experiment_data(wildcards):
    return dataset_files(REGISTRY.experiment(wildcards.experiment)["dataset"])


def resolved_settings(wildcards):
    """The experiment at this scale as canonical JSON: a change re-runs the job (params trigger)."""
    return json.dumps(REGISTRY.resolve(wildcards.experiment), sort_keys=True)


def cli_options():
    """Options every `dens` job gets so it resolves the same configuration as the DAG."""
    options = f"--scale {SCALE} --seed {REGISTRY.options['seed']}"
    for path in REGISTRY.options["extra_experiments"]:
        options += f" --extra-experiments {path}"
    return options


def gpu_resources(experiment, hours_factor=1.0):
    """Slurm resources of a GPU job sized like the paper's run (none at CPU scales)."""
    resources = REGISTRY.experiment(experiment)["resources"]
    if not REGISTRY.scale["gpus"]:
        return {"nodes": 1, "tasks": 1, "tasks_per_gpu": 1, "gres": "", "runtime": 60 * 24}
    gpus = resources["gpus"]
    return {
        "nodes": math.ceil(gpus / GPUS_PER_NODE),
        "tasks": gpus,
        "tasks_per_gpu": 1,  # one training process per GPU
        "gres": f"gpu:{min(gpus, GPUS_PER_NODE)}",
        "runtime": math.ceil(60 * resources["runtime_hours"] * hours_factor),
    }


def train_resource(name, hours_factor=1.0):
    return lambda wildcards: gpu_resources(wildcards.experiment, hours_factor)[name]
