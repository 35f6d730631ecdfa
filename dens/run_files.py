"""The names of the files inside a run directory, relative to it (a trained run:
results/{scale}/runs/{experiment}/seed{seed}/, a published checkpoint's: results/{scale}/
published/{name}/; dens.pipeline.paths says where the directories are). Imports nothing, so
that the Snakefile can read them without torch."""

from __future__ import annotations

METRICS_FILES = {
    "evaluate": "metrics.json",
    "relax": "relax/metrics.json",
    "simulate": "simulate/metrics.json",
    "test": "test/metrics.json",
}
"""Metrics file of each stage that writes one, relative to the run directory."""
SUBMISSION_FILE = "test/submission.npz"
"""S2EF test predictions in the evaluation server's format (dens.pipeline.submission), in a run
directory."""
SERVER_RESULTS_FILE = "test/server_results.json"
"""The evaluation server's S2EF test results (dens.pipeline.challenges), in a run directory."""
RELAX_SUBMISSION_FILE = "relax/submission.npz"
"""IS2RE relaxed energies in the evaluation server's format (dens.pipeline.submission), in a run
dir."""
RELAX_SERVER_RESULTS_FILE = "relax/server_results.json"
"""The evaluation server's IS2RE results (dens.pipeline.challenges), in a run directory."""
SUBMISSION_FILES = {"test": SUBMISSION_FILE, "relax": RELAX_SUBMISSION_FILE}
"""Evaluation-server file of each stage that writes one (S2EF test, IS2RE)."""
SERVER_RESULTS_FILES = {"test": SERVER_RESULTS_FILE, "relax": RELAX_SERVER_RESULTS_FILE}
"""Server results file of each stage whose metrics an evaluation server can give."""
PUBLISHED_FILES = {
    "checkpoint": "checkpoints/best.pt",
    "evaluate": METRICS_FILES["evaluate"],
    "relax": METRICS_FILES["relax"],
    "relax_submission": RELAX_SUBMISSION_FILE,
    "test": METRICS_FILES["test"],
    "submission": SUBMISSION_FILE,
}
"""Files of a published checkpoint's run (the names of a trained run's), by kind."""
