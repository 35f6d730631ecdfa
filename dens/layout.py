"""The files inside a run directory and inside a dataset directory: the one place that names them.

A run directory holds one training run (results/{scale}/runs/{experiment}/seed{seed}/ in the
pipeline) or a published checkpoint imported as one (results/{scale}/published/{name}/); a
dataset directory holds the prepared splits of one dataset (results/{scale}/data/{dataset}/).
dens.pipeline.paths says where the directories are; :class:`RunDirectory` and
:class:`DatasetDirectory` say what is inside. Their ``path`` is a ``Path`` for files on disk or a
``PurePosixPath`` relative to the pipeline directory (Snakemake's patterns, wildcards included);
every file they name has the same type. Imports only the standard library, so that the Snakefile
reads it without torch.

    <run>/checkpoints/best.pt, last.pt, best-epoch.pt   the weights evaluation uses; the
                                  training state to resume; the best epoch's copy kept inside
    <run>/log.csv, metrics.json   one row per epoch; the evaluation's metrics
    <run>/test/submission.npz, metrics.json, server_results.json     S2EF test
    <run>/relax/submission.npz, metrics.json, server_results.json    IS2RE
    <run>/relax/systems.jsonl, state.json, relaxed.aselmdb            relaxation progress
    <run>/simulate/metrics.json   MD17 simulations (their own files: dens.simulate)
    <run>/.kept/                  second names of the training job's outputs (dens.runs)
    <dataset>/<split>/shard-000000.aselmdb ...   a split: a folder of nothing but aselmdb shards,
                                  whose name order is the row order (fairchem's AseDBDataset
                                  reads such a folder as one dataset)
    <dataset>/<split>.manifest.json, provenance.json   each shard's size, rows and sha256
                                  (dens.data.split_folder); how the dataset was made
    <dataset>/.work/<archive>/group-<g>.json, shard-NNNNNN.aselmdb, shard-NNNNNN.json
                                  a paper-scale conversion in progress (dens.data.oc_convert)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath
from typing import Generic, TypeVar

P = TypeVar("P", bound=PurePath)

METRICS_FILE = "metrics.json"
"""The metrics file of a run and of each stage folder in it."""
METRICS_FILES = {
    "evaluate": METRICS_FILE,
    "relax": f"relax/{METRICS_FILE}",
    "simulate": f"simulate/{METRICS_FILE}",
    "test": f"test/{METRICS_FILE}",
}
"""Metrics file of each stage that writes one, relative to the run directory."""
SUBMISSION_FILES = {"test": "test/submission.npz", "relax": "relax/submission.npz"}
"""Evaluation-server file of each stage that writes one (S2EF test predictions, IS2RE relaxed
energies; dens.pipeline.submission), relative to the run directory."""
SERVER_RESULTS_FILES = {"test": "test/server_results.json", "relax": "relax/server_results.json"}
"""The evaluation server's results of each stage's submission, which the user drops in."""
PUBLISHED_FILES = {
    "checkpoint": "checkpoints/best.pt",
    "evaluate": METRICS_FILES["evaluate"],
    "relax": METRICS_FILES["relax"],
    "relax_submission": SUBMISSION_FILES["relax"],
    "test": METRICS_FILES["test"],
    "submission": SUBMISSION_FILES["test"],
}
"""Files of a published checkpoint's run (the names of a trained run's), by kind."""
TRAIN_OUTPUTS = ("checkpoints/best.pt", "log.csv", METRICS_FILES["evaluate"])
"""The files of a run the training job declares (workflow/rules/train.smk; metrics.json where
the scale scores the run in that job): Snakemake deletes them before it reruns the job, which may
then move the run aside (dens.runs.move_aside)."""
MANIFEST_SUFFIX = ".manifest.json"
"""A prepared split's manifest: ``<split>.manifest.json`` beside its folder (and, for a single
aselmdb file a library user wrote, ``<name>.aselmdb.manifest.json`` beside it)."""
SHARD_SUFFIX = ".aselmdb"
"""The suffix of every shard of a split folder (ase.db picks the backend by it)."""
WORK_DIR = ".work"
"""A dataset directory's folder of a conversion in progress, removed when the dataset is done."""
PROVENANCE_FILE = "provenance.json"
"""How a dataset directory was made, written last by its preparation."""


@dataclass(frozen=True)
class RunDirectory(Generic[P]):
    """A run's directory and every file inside it."""

    path: P

    def checkpoint(self, kind: str = "best") -> P:
        """checkpoints/best.pt (the weights evaluation uses) or last.pt (the training state)."""
        return self.path / "checkpoints" / f"{kind}.pt"

    @property
    def best_epoch_checkpoint(self) -> P:
        """The best epoch's checkpoint, kept inside the run: checkpoints/best.pt (which Snakemake
        may delete before a rerun) is published from it (dens.runs.publish)."""
        return self.path / "checkpoints" / "best-epoch.pt"

    @property
    def log(self) -> P:
        """log.csv: one row per epoch (dens.train.LOG_COLUMNS)."""
        return self.path / "log.csv"

    def stage_dir(self, stage: str) -> P:
        """The folder of a stage's own files: ``relax``, ``simulate`` or ``test``."""
        return self.path / stage

    def metrics(self, stage: str = "evaluate") -> P:
        """metrics.json of the run's evaluation, S2EF test, relaxation or simulation."""
        return self.path / METRICS_FILES[stage]

    def submission(self, stage: str = "test") -> P:
        """The file uploaded to the evaluation server: S2EF test ("test") or IS2RE ("relax")."""
        return self.path / SUBMISSION_FILES[stage]

    def server_results(self, stage: str = "test") -> P:
        """Where the user puts the evaluation server's results of ``submission(stage)``."""
        return self.path / SERVER_RESULTS_FILES[stage]

    def published(self, kind: str) -> P:
        """A file of a published checkpoint's run, ``kind`` one of :data:`PUBLISHED_FILES`."""
        return self.path / PUBLISHED_FILES[kind]

    @property
    def relax_systems(self) -> P:
        """relax/systems.jsonl: one line per relaxed system, appended as systems finish."""
        return self.stage_dir("relax") / "systems.jsonl"

    @property
    def relax_state(self) -> P:
        """relax/state.json: the systems in the batch when the relaxation stopped."""
        return self.stage_dir("relax") / "state.json"

    @property
    def relaxed_structures(self) -> P:
        """relax/relaxed.aselmdb: the relaxed structures."""
        return self.stage_dir("relax") / "relaxed.aselmdb"

    @property
    def kept_dir(self) -> P:
        """.kept/: second names of the training job's outputs (dens.runs.keep_outputs)."""
        return self.path / ".kept"


@dataclass(frozen=True)
class DatasetDirectory(Generic[P]):
    """A prepared dataset's directory: one folder of aselmdb shards per split, a manifest beside
    each, and the provenance record written last."""

    path: P

    def split(self, name: str) -> P:
        """The split's folder: nothing but its shards (:func:`shard_name`), in row order."""
        return self.path / name

    def shard(self, name: str, index: int) -> P:
        """Shard ``index`` (0, 1, ...) of split ``name``."""
        return self.split(name) / shard_name(index)

    def manifest(self, name: str) -> P:
        return manifest_of(self.split(name))

    @property
    def work(self) -> P:
        """.work/: a paper-scale conversion in progress (removed when the dataset is done)."""
        return self.path / WORK_DIR

    def archive_work(self, archive: str) -> P:
        """.work/<archive>/: the shards converted from one archive and their records."""
        return self.work / archive

    def group_record(self, archive: str, group: str | int) -> P:
        """.work/<archive>/group-<g>.json: the shards and rows of one conversion job."""
        return self.archive_work(archive) / f"group-{group}.json"

    @property
    def provenance(self) -> P:
        return self.path / PROVENANCE_FILE


def shard_name(index: int) -> str:
    """``shard-NNNNNN.aselmdb``: zero-padded, so that name order is index order."""
    return f"shard-{index:06d}{SHARD_SUFFIX}"


def shard_record_name(index: int) -> str:
    """``shard-NNNNNN.json``: the record of a converted shard in .work (its source, its rows)."""
    return f"shard-{index:06d}.json"


def manifest_of(split: P) -> P:
    """The manifest beside a split folder (``<split>.manifest.json``) or beside a single aselmdb
    file (``<name>.aselmdb.manifest.json``)."""
    return split.with_name(split.name + MANIFEST_SUFFIX)


def provenance_of(split: P) -> P:
    """The provenance record of the dataset a split belongs to (beside it)."""
    return split.with_name(PROVENANCE_FILE)
