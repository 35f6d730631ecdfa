"""Disk first: a step that writes gigabytes checks the free space of its folder before it writes a
byte, and stops in one line when what it needs does not fit.

The steps and what they need (README.md "Data"):

- download (:func:`dens.data.download.transfer.download`): the archive's ``size.download`` in
  config/archives.yaml, less what a resumable ``<file>.part`` already holds;
- extract (:func:`dens.data.download.extract.extract`): a plain tar, its own byte count (a tar is
  its members plus headers); a compressed one (tar.gz, tar.xz, zip), ``size.extracted``;
- conversion of OC extracted archives to aselmdb shards (one job per group of an archive's
  files, dens.data.oc_convert.convert_group): the group's share of the archive's published frame
  count times :data:`ASELMDB_BYTES_PER_FRAME` (:func:`conversion_bytes`,
  :func:`require_conversion_space`). The shards are written once: the finishing job moves them
  into the split folders (dens.data.oc_finish), so nothing is copied or merged.

Sizes the catalog states (``3.4G``) are rounded and may be decimal or binary units: the need is
the highest byte count the size stands for (:func:`catalog_bytes`, after
:func:`dens.data.download.content.size_range`), plus :data:`SAFETY_MARGIN`. Where no size is known
nothing is refused: one line is logged (a warning) saying that the space was not checked.

:func:`require_free_space` raises :class:`dens.errors.DiskError`, which ``dens`` prints as one
line (exit status 2), e.g.::

    dens: error: results/downloads: downloading s2ef_train_2M.tar needs 3.5 GiB
    (config/archives.yaml states 3.4G, plus a 64.0 MiB margin), 1.2 GiB free there; free space
    there or choose a folder on a larger disk (a symbolic link in its place works), then rerun

(one line; wrapped here). Sizes print in binary units as everywhere in dens
(:func:`dens.atomic_files.human_size`).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from dens.atomic_files import human_size
from dens.data.download.content import size_range
from dens.errors import DiskError

logger = logging.getLogger(__name__)

#: Room kept free beyond what a step writes: its log, a digest sidecar, the extraction marker and
#: the file system's own blocks for new files. 64 MiB: small beside a dataset, large beside the
#: few kilobytes of those files.
SAFETY_MARGIN = 64 * 1024**2

#: Bytes of aselmdb per OC20 S2EF frame, measured by benchmarks/README.md "OC20 S2EF conversion":
#: 4143 (zlib-compressed JSON rows of generated 67-atom slabs holding 1748 bytes of xz a frame).
#: The real frames are of that size: the catalog's s2ef_train_2M.tar holds 3.4G of xz for
#: 2,000,000 frames, 1.7-1.8 kB a frame. The same row format holds OC22's frames (an estimate
#: there: its slabs' sizes differ).
ASELMDB_BYTES_PER_FRAME = 4143

#: What to do when a step does not fit (the message's end).
REMEDY = (
    "free space there or choose a folder on a larger disk (a symbolic link in its place works), "
    "then rerun"
)


def catalog_bytes(size: str | None) -> int | None:
    """The most bytes a catalog size such as ``3.4G`` may stand for (rounded, decimal or binary:
    :func:`dens.data.download.content.size_range`); None for None (no size published)."""
    return None if size is None else size_range(size)[1]


def _measured(folder: Path) -> Path:
    """``folder``, or its nearest existing parent (a folder not made yet lies on its disk)."""
    existing = Path(os.path.abspath(folder))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def require_free_space(
    folder: str | os.PathLike[str],
    needed_bytes: int | None,
    what: str,
    basis: str,
    remedy: str = REMEDY,
) -> None:
    """Refuse to start a step that will write ``needed_bytes`` into ``folder`` when they and
    :data:`SAFETY_MARGIN` exceed the space free there (``shutil.disk_usage`` of ``folder``, or of
    its nearest existing parent when it does not exist yet). Nothing is written.

    ``what`` names the step (``downloading s2ef_train_2M.tar``) and ``basis`` where the figure
    comes from (``config/archives.yaml states 3.4G``). Too little space raises
    :class:`dens.errors.DiskError`: "``<folder>: <what> needs <N> (<basis>, plus a <margin>
    margin), <F> free there; <remedy>``". ``needed_bytes`` None (no size known; ``basis`` says
    why) refuses nothing: a warning "``<folder>: free space not checked for <what> (<basis>);
    <F> free there``" is logged, as it is when the free space cannot be read.
    """
    try:
        free = shutil.disk_usage(_measured(Path(folder))).free
    except OSError as error:
        logger.warning(
            "%s: free space not checked for %s (%s)", folder, what, error.strerror or error
        )
        return
    if needed_bytes is None:
        logger.warning(
            "%s: free space not checked for %s (%s); %s free there",
            folder,
            what,
            basis,
            human_size(free),
        )
        return
    need = max(needed_bytes, 0) + SAFETY_MARGIN
    if need > free:
        raise DiskError(
            f"{folder}: {what} needs {human_size(need)} ({basis}, plus a "
            f"{human_size(SAFETY_MARGIN)} margin), {human_size(free)} free there; {remedy}"
        )
    logger.info(
        "%s: %s needs %s (%s), %s free there",
        folder,
        what,
        human_size(need),
        basis,
        human_size(free),
    )


def conversion_bytes(frames: int) -> int:
    """Estimated bytes of the aselmdb shards of ``frames`` OC frames: ``frames`` x
    :data:`ASELMDB_BYTES_PER_FRAME` (measured)."""
    return frames * ASELMDB_BYTES_PER_FRAME


def require_conversion_space(
    folder: str | os.PathLike[str],
    frames: int | None,
    what: str,
    written: int = 0,
) -> None:
    """Refuse a conversion of ``frames`` OC frames into ``folder`` (the prepared dataset's folder)
    that would not fit (:func:`require_free_space` with :func:`conversion_bytes`); ``what`` names
    the step (``converting oc20-2m split train``). ``written``: bytes a resumed conversion's
    finished shards already hold there (they count as written, as a download's part file does).
    ``frames`` None (no published count): only a warning that the space was not checked."""
    if frames is None:
        require_free_space(folder, None, what, "no published frame count to estimate it from")
        return
    basis = f"{frames:,} frames x {ASELMDB_BYTES_PER_FRAME} bytes of aselmdb a frame"
    if written:
        basis += f", less {human_size(written)} already converted"
    require_free_space(folder, conversion_bytes(frames) - written, what, basis)


def require_download_space(dest: str | os.PathLike[str], size: str | None) -> None:
    """Refuse a download to ``dest`` whose catalog ``size`` (``size.download``) would not fit in
    its folder. A ``<dest>.part`` left by an interrupted run counts as written: the transfer
    resumes it, or truncates it and starts again (either way the file ends at ``size`` and the
    part's bytes are already on the disk)."""
    dest = Path(dest)
    if size is None:
        basis = "config/archives.yaml states no download size"
        require_free_space(dest.parent, None, f"downloading {dest.name}", basis)
        return
    part = dest.with_name(dest.name + ".part")
    held = part.stat().st_size if part.is_file() else 0
    basis = f"config/archives.yaml states {size}"
    if held:
        basis += f", less {human_size(held)} already in {part.name}"
    needed = size_range(size)[1] - held
    require_free_space(dest.parent, needed, f"downloading {dest.name}", basis)


def require_extract_space(
    archive: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str],
    fmt: str,
    extracted_size: str | None,
) -> None:
    """Refuse to extract ``archive`` (format ``fmt``) into ``dest_dir`` where its members would
    not fit in ``dest_dir``'s folder. A plain tar needs its own byte count: its members are
    stored uncompressed. (The catalog's ``size.extracted`` of the OC20 S2EF tars, the owners'
    "uncompressed" size, counts their ``.xz`` members decompressed, which dens never does: the
    converter reads them as they are; 17G for the 3.4G s2ef_train_2M.tar.) A compressed archive
    (tar.gz, tar.xz, zip) needs ``extracted_size`` (catalog ``size.extracted``; None: only a
    warning)."""
    archive, dest_dir = Path(archive), Path(dest_dir)
    what = f"extracting {archive.name}"
    if fmt == "tar":
        needed = archive.stat().st_size
        basis = "the tar's own size: its members are stored uncompressed"
        require_free_space(dest_dir.parent, needed, what, basis)
        return
    needed = catalog_bytes(extracted_size)
    basis = (
        "config/archives.yaml states no extracted size"
        if extracted_size is None
        else f"config/archives.yaml states {extracted_size} extracted"
    )
    require_free_space(dest_dir.parent, needed, what, basis)
