"""Import a published fairchem 1.x checkpoint as a dens run: ``dens import-checkpoint``.

The checkpoints of the DeNS paper, of EquiformerV2 (OC20 S2EF-2M / All+MD, OC22, the
EquiformerV2-{31M,86M,153M}-DeNS models) and of eSCN are fairchem 1.x trainer checkpoints: a
state_dict, the training config and the label normalisers. This module maps one onto our model
family (the family's importer: ``IMPORTERS``) and writes ``run_dir/checkpoints/best.pt`` in
dens's own layout (dens.checkpoint), so that everything that reads a trained run reads the
imported one: ``dens evaluate``, the ASE calculator (dens.calculator), relaxations and
simulations.

The run is labelled with a registered experiment (``--experiment``, resolved at ``--scale``): it
supplies the dataset, the evaluation batch size and the name in the metrics; the model's
hyper-parameters and weights come from the checkpoint (its family must be the experiment's).
best.pt records where it came from (``imported_from``: file, sha256, the reference's model
config) and holds no training history: evaluation reports no training cost for it. The file is
read with ``torch.load(weights_only=True)``: nothing in it runs.

The elements the run may be used on (the normaliser's ``elements``, which the ASE calculator
enforces as for trained runs) come from the training data the experiment names: the atomic
numbers of its prepared train split(s) at the registry's scale (one pass over the rows) when
they exist; else the model's embedding range 1..max_num_elements - 1, and the command says so
(a fairchem 1.x config names its data by path on the machine that trained it, and lists no
elements). ``imported_from["elements_source"]`` records which.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dens.atomic_files import file_digest
from dens.checkpoint import FORMAT_VERSION, save_checkpoint
from dens.data.validation import model_max_atomic_number
from dens.errors import ModelNotAvailableError
from dens.layout import RunDirectory
from dens.models import count_parameters
from dens.models.so3.fairchem_import import CheckpointImportError
from dens.normalization import NUM_ELEMENTS, Normalizer, load_element_references
from dens.pipeline.registry import Registry

IMPORTERS = {
    "equiformer_v2": "dens.models.equiformer_v2.import_fairchem:load_fairchem_checkpoint",
    "escn": "dens.models.escn.import_fairchem:load_fairchem_checkpoint",
}
"""Model family -> "module:function" returning (model, info) for a fairchem 1.x checkpoint."""


def importer(family: str) -> Any:
    """The checkpoint importer of a model family."""
    if family not in IMPORTERS:
        raise ModelNotAvailableError(
            f"no fairchem checkpoint importer for model family {family!r}; "
            f"importers exist for {sorted(IMPORTERS)}"
        )
    module, name = IMPORTERS[family].split(":")
    return getattr(importlib.import_module(module), name)


def imported_normalizer(
    normalizers: Mapping[str, Mapping[str, float]],
    energy_lin_ref: torch.Tensor | None = None,
    element_references: torch.Tensor | None = None,
) -> Normalizer:
    """Our Normalizer from the reference's: E' = (E - mean) / std and f' = f / force std (the
    reference normalises forces with their own std; mean 0). Without normalisers the reference
    trained on raw labels: mean 0, std 1. ``energy_lin_ref`` [elements]: the per-element
    references, in normalised units, that a ``use_energy_lin_ref`` model (fairchem's OC22
    EquiformerV2) adds to its energy; here they become element references of std * lin_ref[Z]
    eV per atom, so E = E' * std + sum_i ref[Z_i] + mean as the reference predicts.
    ``element_references`` [119] (eV per atom): the linear reference the reference's training
    data subtracted from its energies (``dataset_linear_reference``), so E = E' * std +
    sum_i ref[Z_i] + mean likewise; at most one of the two."""
    if energy_lin_ref is not None and element_references is not None:
        raise ValueError("give energy_lin_ref (added by the model) or element_references, not both")
    energy = normalizers.get("energy", {"mean": 0.0, "std": 1.0})
    forces = normalizers.get("forces", {"mean": 0.0, "std": energy["std"]})
    if float(forces.get("mean", 0.0)) != 0.0:
        raise ValueError(f"force normaliser with a non-zero mean {forces['mean']} cannot be mapped")
    references = torch.zeros(NUM_ELEMENTS, dtype=torch.float64)
    if element_references is not None:
        references = element_references.to(torch.float64).clone()
    if energy_lin_ref is not None:
        values = energy_lin_ref.to(torch.float64).flatten() * float(energy["std"])
        references[: values.numel()] = values
    return Normalizer(
        mean=float(energy["mean"]),
        std=float(energy["std"]),
        element_references=references,
        elements=None,
        force_std=float(forces["std"]),
    )


def dataset_linear_reference(config: Mapping[str, Any]) -> str | None:
    """The linear energy reference that the reference's training data subtracted, as its config
    names it: ``dataset.train.lin_ref`` (ocp 5d0f59e ``OC22LmdbDataset``, lines 115-119 and
    197-199: the target is E - sum_i coeff[Z_i]; the official DeNS OC22 config, line 19, and
    fairchem 1.x's OC22 EquiformerV2 config, line 18) or ``lin_ref`` of the first dataset of an
    older list-style config; None without one. A model trained so predicts E - sum_i coeff[Z_i]
    unless it adds the reference itself (``use_energy_lin_ref``)."""
    dataset = config.get("dataset") or {}
    if isinstance(dataset, list):
        train = dataset[0] if dataset else {}
    else:
        train = dataset.get("train", dataset)
    value = train.get("lin_ref") if isinstance(train, Mapping) else None
    return str(value) if value else None


def published_references(experiment: Mapping[str, Any], root: Path, lin_ref: str) -> torch.Tensor:
    """The element references [119] (eV per atom) of the experiment's published linear reference
    file (``optim.energy_reference_file``, relative to the pipeline directory ``root``), which a
    checkpoint trained on energies minus its ``lin_ref`` needs to predict total energies."""
    path = experiment["optim"].get("energy_reference_file")
    if path is None:
        raise CheckpointImportError(
            f"the checkpoint was trained on energies minus the linear reference {lin_ref!r} "
            f"(config dataset.train.lin_ref) and its model does not add it back "
            f"(use_energy_lin_ref false); experiment {experiment['name']!r} has no "
            "optim.energy_reference_file to take it from (import it at the scale that sets one, "
            "e.g. --scale paper with an OC22 experiment)"
        )
    full = Path(path) if Path(path).is_absolute() else root / path
    if not full.is_file():
        raise CheckpointImportError(
            f"the checkpoint needs the linear reference {lin_ref!r}: optim.energy_reference_file "
            f"{full} does not exist (fetch it with the pipeline's download rule)"
        )
    return load_element_references(full)


def training_elements(registry: Registry, dataset: str) -> tuple[list[int], str] | None:
    """The atomic numbers of ``dataset``'s prepared train split(s) at the registry's scale and
    where they come from; None when a split is not prepared."""
    from dens.data.split_folder import split_rows
    from dens.pipeline import paths

    files = [
        registry.root / paths.dataset(registry.scale_name, dataset).split(split)
        for split in registry.splits(dataset, "train")
    ]
    if not files or not all(path.is_dir() for path in files):
        return None
    elements: set[int] = set()
    for path in files:
        for _, row in split_rows(path):
            elements.update(row.numbers.tolist())
    where = ", ".join(str(path) for path in files)
    return sorted(elements), f"the atomic numbers of {dataset}'s train split ({where})"


def import_checkpoint(
    source: Path,
    run_dir: Path,
    registry: Registry,
    experiment: Mapping[str, Any],
    energy_reference_file: Path | None = None,
) -> dict[str, Any]:
    """Map the fairchem 1.x checkpoint ``source`` onto our model and write
    ``run_dir/checkpoints/best.pt``, labelled with ``experiment`` (``registry.resolve``: name,
    scale, seed); returns best.pt's state. ``energy_reference_file``: the
    published linear reference a checkpoint trained on energies minus one needs, instead of the
    experiment's ``optim.energy_reference_file`` (which smaller scales set null; the target
    ``published`` passes the downloaded file at every scale).

    Raises dens.models.so3.fairchem_import.CheckpointImportError (named keys or
    settings) when the checkpoint cannot be mapped exactly, ModelNotAvailableError when the
    experiment's family has no importer."""
    source = Path(source)
    experiment = copy.deepcopy(dict(experiment))
    family = experiment["model"]["family"]
    model, info = importer(family)(source)
    lin_ref = info.get("energy_lin_ref") if info.get("use_energy_lin_ref") else None
    data_lin_ref = dataset_linear_reference(info["config"])
    references = None
    if lin_ref is None and data_lin_ref is not None:
        if energy_reference_file is not None:
            experiment["optim"]["energy_reference_file"] = str(energy_reference_file)
        references = published_references(experiment, registry.root, data_lin_ref)
    switches = {
        key: experiment["model"]["hyperparameters"][key] for key in ("attention", "layer_norm")
    }
    hyperparameters = {**info["hyperparameters"], **switches}
    experiment["model"] = {"family": family, "preset": None, "hyperparameters": hyperparameters}
    imported_from = {
        "file": source.name,
        "sha256": file_digest(source),
        "reference": "fairchem 1.x",
        "model_config": info["config"]["model"],
        "ema_weights": bool(info["ema"]),
    }
    elements, elements_source = model_elements(registry, experiment, model)
    imported_from["elements_source"] = elements_source
    normalizer = imported_normalizer(info["normalizers"], lin_ref, references)
    normalizer = dataclasses.replace(normalizer, elements=tuple(elements))
    state = best_state(experiment, model, info, normalizer, imported_from)
    save_checkpoint(state, RunDirectory(Path(run_dir)).checkpoint())
    return state


def model_elements(
    registry: Registry, experiment: Mapping[str, Any], model: torch.nn.Module
) -> tuple[list[int], str]:
    """The elements an imported model may be used on and where they come from: those of the
    dataset's training data (:func:`training_elements`), else the model's embedding range (a
    note on stderr says so)."""
    found = training_elements(registry, experiment["dataset"])
    if found is not None:
        return found
    top = model_max_atomic_number(model)
    source = (
        f"the model's embedding range 1..{top} ({experiment['dataset']} has no prepared "
        f"train split at scale {registry.scale_name}; the checkpoint's config lists no "
        "elements)"
    )
    print(
        f"note: {experiment['name']} may be used on elements {source}; prepare the "
        "dataset and import again to refuse elements absent from its training data",
        file=sys.stderr,
    )
    return list(range(1, top + 1)), source


def best_state(
    experiment: dict[str, Any],
    model: torch.nn.Module,
    info: Mapping[str, Any],
    normalizer: Normalizer,
    imported_from: dict[str, Any],
) -> dict[str, Any]:
    """The imported run's best.pt: the weights as trained for no epoch of ours."""
    return {
        "format_version": FORMAT_VERSION,
        "kind": "best",
        "experiment": experiment,
        "epoch": 0,
        "step": 0,
        "model": model.state_dict(),
        "weights": "ema" if info["ema"] else "model",
        "normalizer": normalizer.to_dict(),
        "val": None,
        "num_parameters": count_parameters(model),
        "imported_from": imported_from,
    }
