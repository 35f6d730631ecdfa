"""The shards of a paper-scale OC20/OC22 conversion (dens.data.oc_convert): one source file (an
``*.extxyz.xz`` or an ``*.lmdb``) -> one shard aselmdb under ``.work/<archive>/``, recorded with
its source's size and mtime so that a rerun skips it (`convert_shard`); a conversion job's files
run in one process or on a pool of spawned worker processes (`run_shards`). The shards become
the files of the split folders as they are, moved, never merged (dens.data.oc_convert's module
notes, "Design").
"""

import json
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dens import atomic_files
from dens.layout import shard_name, shard_record_name


@dataclass(frozen=True)
class ShardTask:
    """One source file -> one shard of a split: source file ``index`` (0, 1, ...) of its archive's
    sorted source files, converted into ``work_dir`` (the archive's folder in .work)."""

    split: str
    index: int
    kind: str  # "extxyz" | "lmdb"
    source: Path
    archive: str
    work_dir: Path
    md_split: bool = False
    extra: tuple[tuple[str, Any], ...] = ()

    @property
    def shard(self) -> Path:
        return self.work_dir / shard_name(self.index)

    @property
    def record(self) -> Path:
        return self.work_dir / shard_record_name(self.index)


def _source_id(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"source": str(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


# -------------------------------------------------------------------------------- shards ----


def _rows(task: ShardTask) -> Iterator[Any]:
    """The rows of one source file; each structure passes dens.data.validation (the extxyz
    reader checks its frames itself; a legacy LMDB row is named by file, row and sid)."""
    if task.kind == "extxyz":
        from dens.data.s2ef_extxyz import read_s2ef_frames

        yield from read_s2ef_frames(task.source, md_split=task.md_split)
        return
    from dens.data.legacy_lmdb import read_legacy_rows
    from dens.data.validation import check_atoms

    for index, row in enumerate(read_legacy_rows(task.source, **dict(task.extra))):
        check_atoms(row[0], f"{task.source}: row {index} (sid {row[1].get('sid')})")
        yield row


def shard_done(task: ShardTask) -> int | None:
    """Rows of a finished shard whose source is unchanged, else None."""
    if not (task.record.is_file() and task.shard.is_file()):
        return None
    try:
        record = json.loads(task.record.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if {k: record.get(k) for k in ("source", "bytes", "mtime_ns")} != _source_id(task.source):
        return None
    return int(record["rows"])


def convert_shard(task: ShardTask) -> tuple[str, int, int]:
    """Convert one source file into its shard unless already done -> (split, index, rows)."""
    from dens.data.legacy_lmdb import write_rows

    done = shard_done(task)
    if done is not None:
        return task.split, task.index, done
    task.work_dir.mkdir(parents=True, exist_ok=True)
    task.record.unlink(missing_ok=True)
    partial = task.shard.with_name(task.shard.stem + ".partial.aselmdb")
    rows = write_rows(partial, _rows(task))
    os.replace(partial, task.shard)
    record = {**_source_id(task.source), "archive": task.archive, "rows": rows}
    atomic_files.write_text(task.record, json.dumps(record) + "\n", "recording a converted shard")
    return task.split, task.index, rows


def run_shards(tasks: Sequence[ShardTask], processes: int, progress: bool = True) -> dict:
    """Convert every task (``processes`` worker processes) -> {(split, index): rows}."""
    counts: dict[tuple[str, int], int] = {}
    bar = tqdm(total=len(tasks), desc="shards", unit="shard", disable=not progress)
    rows = 0
    try:
        if processes <= 1 or len(tasks) <= 1:
            results: Iterator[tuple[str, int, int]] = map(convert_shard, tasks)
            for split, index, n in results:
                counts[split, index] = n
                rows += n
                bar.update()
                bar.set_postfix(rows=rows)
        else:
            context = multiprocessing.get_context("spawn")
            with context.Pool(min(processes, len(tasks))) as pool:
                for split, index, n in pool.imap_unordered(convert_shard, tasks):
                    counts[split, index] = n
                    rows += n
                    bar.update()
                    bar.set_postfix(rows=rows)
    finally:
        bar.close()
    return counts
