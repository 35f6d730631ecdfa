"""Prepare a dataset's aselmdb splits: one preparer per dataset family, found from a table.

A preparer gets the dataset's settings at the scale (``Registry.data_settings``: name, family,
splits by role, source generate/download, generator sizes and seed), the output directory
(results/{scale}/data/<dataset>, dens.pipeline.paths), the downloaded inputs at the paper scale and
the number of processes it may use, and writes every split of config/datasets.yaml plus
provenance.json (last: its presence marks the dataset complete). `prepare_dataset` then writes
each split's manifest beside it (``<split>.aselmdb.manifest.json``, dens.data.aselmdb); a split
without one is still read, checked page by page instead of by its sha256.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dens.errors import ConfigError

Preparer = Callable[[Mapping[str, Any], Path, Sequence[Path], int], None]


def prepare_md17(
    settings: Mapping[str, Any], out_dir: Path, inputs: Sequence[Path], processes: int = 1
) -> None:
    """mini-MD17 generated with GFN2-xTB (dens.data.md17_generate), or the paper's npz converted
    (dens.data.md17)."""
    from dens.data import md17, md17_generate

    if settings["source"] == "generate":
        md17_generate.generate_md17(
            settings["molecule"],
            out_dir,
            n_train=settings["n_train"],
            n_val=settings["n_val"],
            n_test=settings["n_test"],
            seed=settings["seed"],
            stride=settings["stride"],
            equilibration_steps=settings["equilibration_steps"],
        )
        return
    npz = [Path(p) for p in inputs if str(p).endswith(".npz")]
    if len(npz) != 1:
        raise ConfigError(
            f"dataset {settings['name']}: expected one MD17 .npz input, got {list(inputs)}"
        )
    md17.convert_md17_npz(npz[0], out_dir)


def prepare_oc20(
    settings: Mapping[str, Any], out_dir: Path, inputs: Sequence[Path], processes: int = 1
) -> None:
    """mini-OC20 generated with EMT (dens.data.catalysts), or the downloaded S2EF/IS2RE
    archives converted (dens.data.oc_convert)."""
    if settings["source"] == "generate":
        from dens.data.catalysts import prepare_oc20_generated

        prepare_oc20_generated(settings, out_dir, processes)
        return
    from dens.data.oc_convert import prepare_oc_downloaded

    prepare_oc_downloaded(settings, out_dir, inputs, processes, catalog=settings.get("catalog"))


def prepare_oc22(
    settings: Mapping[str, Any], out_dir: Path, inputs: Sequence[Path], processes: int = 1
) -> None:
    """mini-OC22 generated with EMT (dens.data.catalysts), or the downloaded OC22 S2EF-Total and
    IS2RE-Total LMDBs converted (dens.data.oc_convert)."""
    if settings["source"] == "generate":
        from dens.data.catalysts import prepare_oc22_generated

        prepare_oc22_generated(settings, out_dir, processes)
        return
    from dens.data.oc_convert import prepare_oc_downloaded

    prepare_oc_downloaded(settings, out_dir, inputs, processes, catalog=settings.get("catalog"))


PREPARERS: dict[str, Preparer] = {"md17": prepare_md17, "oc20": prepare_oc20, "oc22": prepare_oc22}
"""Dataset family (config/datasets.yaml ``family``) -> its preparer."""


def prepare_dataset(
    settings: Mapping[str, Any], out_dir: Path, inputs: Sequence[Path] = (), processes: int = 1
) -> None:
    """Write the splits of one dataset (``settings`` from ``Registry.data_settings``) with up to
    ``processes`` worker processes, then each split's manifest (size, row count, sha256:
    dens.data.aselmdb_integrity.write_manifest) that every later reader checks the split against."""
    from dens.data.aselmdb import SUFFIX
    from dens.data.aselmdb_integrity import write_manifest
    from dens.layout import MANIFEST_SUFFIX

    out_dir = Path(out_dir)
    for stale in out_dir.glob(f"*{SUFFIX}{MANIFEST_SUFFIX}"):
        stale.unlink()
    PREPARERS[settings["family"]](settings, out_dir, [Path(p) for p in inputs], processes)
    for split in sorted(out_dir.glob(f"*{SUFFIX}")):
        write_manifest(split)
