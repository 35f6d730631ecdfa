"""The evaluation servers' challenges, and the results files read back from them.

The labels of the OC20 S2EF and OC22 S2EF-Total test splits, and of their IS2RE test splits, are
not public; the paper's test columns (Tables 2 and 3) come from the EvalAI evaluation server.
:data:`CHALLENGES` and :data:`IS2RE_CHALLENGES` name each dataset family's challenge and its
splits; dens.pipeline.submission writes the S2EF file the server takes, dens.pipeline.is2re the
IS2RE one. This module needs no model (no torch): the tables (dens.pipeline.tables) read the
server's results with it.

The server's results are read back from ``test/server_results.json`` in the run directory
(dens.layout.RunDirectory.server_results), a file the user writes from the numbers EvalAI shows
for the submission, validated against workflow/schemas/server_results.schema.yaml::

    {"challenge": "oc20_s2ef",                  # or "oc22_s2ef_total"
     "submission": "EvalAI submission 123456, 2024-05-01",   # optional: where it comes from
     "units": {"energy": "eV", "forces": "eV/Å"},            # or meV, meV/Å
     "splits": {"id": {"energy_mae": 0.2197, "forces_mae": 0.0127,
                       "forces_cos": 0.512, "efwt": 0.0081},  # forces_cos, efwt optional
                "ood_ads": {...}, "ood_cat": {...}, "ood_both": {...}}}

Every split of the challenge must be there; the tables (dens.pipeline.tables) prefer it to local
labels.

IS2RE (:data:`IS2RE_CHALLENGES`, Tables 2 and 3: relaxed energies from dens.pipeline.is2re)
works the same way with its own files in the run directory: ``relax/submission.npz``
(RunDirectory.submission("relax")) holds ``<split>_ids`` (the systems' sids as str,
sorted) and ``<split>_energy`` (float64, eV: the relaxed energy, OC20 adsorption / OC22 total), the
layout of fairchem's ``make_submission_file.py --is2re-relaxations``; a relax split's rows are
assigned to challenge splits like test rows (file prefix ``is2re_test_``). The server's IS2RE
results go to ``relax/server_results.json`` (RunDirectory.server_results("relax"))::

    {"challenge": "oc20_is2re",                 # or "oc22_is2re_total"
     "units": {"energy": "eV"},
     "splits": {"id": {"energy_mae": 0.309, "ewt": 0.093},   # ewt (within 0.02 eV) optional
                "ood_ads": {...}, "ood_cat": {...}, "ood_both": {...}}}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dens.config_files import find_root, validate
from dens.errors import ConfigError, DensError

LOCAL_LABELS = "local labels"
SERVER = "evaluation server"
METRICS = ("energy_mae_meV", "forces_mae_meV_per_A", "forces_cos", "efwt", "ewt")
"""Test metrics per split and as the mean over splits (units: meV, meV/Å, 1, fraction,
fraction); ``ewt`` (IS2RE: energy within 0.02 eV) only for IS2RE challenges, the others but
``energy_mae_meV`` only for S2EF ones."""


class ServerResultsError(DensError, ValueError):
    """An evaluation-server results file is unreadable or invalid; the message names the file and
    the key."""


@dataclass(frozen=True)
class Challenge:
    """One task of an evaluation server: S2EF (energy and forces per frame) or IS2RE (relaxed
    energy per system, ``forces`` False)."""

    key: str  # the ``challenge`` of a server results file
    name: str
    splits: tuple[str, ...]  # the server's splits: the key prefixes of the submission file
    dtype: type[np.floating]  # precision of energy (and forces) in the file
    forces: bool = True  # the file holds forces (S2EF) or energies only (IS2RE)
    file_prefix: str = "s2ef_test_"  # a split file named <file_prefix><split> holds that split


CHALLENGES = {
    "oc20": Challenge(
        "oc20_s2ef", "OC20 S2EF", ("id", "ood_ads", "ood_cat", "ood_both"), np.float16
    ),
    "oc22": Challenge("oc22_s2ef_total", "OC22 S2EF-Total", ("id", "ood"), np.float32),
}
"""Challenge of each dataset family whose test labels only the evaluation server has."""

IS2RE_CHALLENGES = {
    "oc20": Challenge(
        "oc20_is2re", "OC20 IS2RE", CHALLENGES["oc20"].splits, np.float64, False, "is2re_test_"
    ),
    "oc22": Challenge(
        "oc22_is2re_total",
        "OC22 IS2RE-Total",
        CHALLENGES["oc22"].splits,
        np.float64,
        False,
        "is2re_test_",
    ),
}
"""IS2RE challenge of each dataset family (relaxed energies, dens.pipeline.is2re). Energies are
float64: fairchem's make_submission_file.py (``write_is2re_relaxations``) stores the energies of
the trajectories' last frames as they are."""


def challenge_for(family: str, task: str = "s2ef") -> Challenge:
    """The evaluation-server challenge of a dataset family (config/datasets.yaml ``family``) for
    ``task`` "s2ef" (:data:`CHALLENGES`) or "is2re" (:data:`IS2RE_CHALLENGES`)."""
    challenges = {"s2ef": CHALLENGES, "is2re": IS2RE_CHALLENGES}[task]
    if family not in challenges:
        raise ConfigError(
            f"dataset family {family!r} has no evaluation-server challenge; the {task.upper()} "
            f"test submission is for {', '.join(challenges)}"
        )
    return challenges[family]


def split_means(per_split: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The mean of each of :data:`METRICS` over the splits (each split weighted equally); a metric
    some split lacks is left out."""
    return {
        key: sum(values[key] for values in per_split.values()) / len(per_split)
        for key in METRICS
        if all(key in values for values in per_split.values())
    }


# -- the server's results --------------------------------------------------------------------------
ENERGY_UNITS = {"eV": 1000.0, "meV": 1.0}
FORCE_UNITS = {"eV/Å": 1000.0, "eV/A": 1000.0, "meV/Å": 1.0, "meV/A": 1.0}


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number the server reports")


def read_server_results(
    path: Path, challenge: Challenge, root: Path | None = None
) -> dict[str, Any]:
    """The server's results of a submission (module notes; S2EF or IS2RE) as test metrics in meV
    and meV/Å, per split and as the mean over the splits, with ``metrics_source: "evaluation
    server"``. ServerResultsError names the file and the key of any problem. root: where
    workflow/schemas/ is (default: dens.config_files.find_root())."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(), parse_constant=_refuse_constant)
    except ValueError as error:  # json.JSONDecodeError is a ValueError
        raise ServerResultsError(f"{path}: not valid JSON: {error}") from error
    try:
        validate(document, "server_results", str(path), find_root() if root is None else root)
    except ConfigError as error:
        raise ServerResultsError(str(error)) from error
    if document["challenge"] != challenge.key:
        raise ServerResultsError(
            f"{path}: challenge: {document['challenge']!r}, but this run's test split goes to "
            f"{challenge.name} ({challenge.key!r})"
        )
    splits = document["splits"]
    missing = [split for split in challenge.splits if split not in splits]
    unknown = [split for split in splits if split not in challenge.splits]
    if missing or unknown:
        raise ServerResultsError(
            f"{path}: splits: "
            + (f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(unknown)}")
            + f" ({challenge.name} has {', '.join(challenge.splits)})"
        )
    energy_scale = ENERGY_UNITS[document["units"]["energy"]]
    per_split = {}
    for split in challenge.splits:
        values = splits[split]
        converted = {"energy_mae_meV": energy_scale * values["energy_mae"]}
        if challenge.forces:
            force_scale = FORCE_UNITS[document["units"]["forces"]]
            converted["forces_mae_meV_per_A"] = force_scale * values["forces_mae"]
        converted |= {key: values[key] for key in ("forces_cos", "efwt", "ewt") if key in values}
        per_split[split] = converted
    return {
        "challenge": challenge.key,
        "metrics_source": SERVER,
        "submission": document.get("submission", ""),
        **split_means(per_split),
        "splits": per_split,
    }
