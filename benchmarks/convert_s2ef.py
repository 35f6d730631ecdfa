"""Throughput of the OC20 S2EF converter (extxyz.xz -> aselmdb shards -> merged split file).

Generates ``--frames`` OC20-sized slab frames (a 4 x 4 x 4 fcc(111) slab + a C-O-H adsorbate,
67 atoms) into ``--files`` ``*.extxyz.xz`` + ``*.txt.xz`` pairs, converts them with 1 and 2
worker processes (dens.data.oc_shards.run_shards) and merges the shards
(dens.data.oc_shards.merge_shards), and prints frames/s, the aselmdb bytes per frame and,
from those, an estimate of the time and disk for S2EF-2M and S2EF-All+MD with 16 processes
(assuming per-process throughput scales linearly; the single-process merge is not parallel).

    python benchmarks/convert_s2ef.py [--frames 2000] [--files 8] [--processes 1 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from dens.data.oc_shards import ShardTask, merge_shards, run_shards
from dens.pipeline.rehearsal.builders import slab_frames, write_s2ef_files

# config/archives.yaml frames
S2EF_2M = {"train": 2_000_000, "val (4 splits)": 999_866 + 999_838 + 999_809 + 999_944}
ALL_MD = {"train (All + MD)": 133_934_018 + 38_315_405, "val (4 splits)": S2EF_2M["val (4 splits)"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--estimate-processes", type=int, default=16)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="dens-bench-s2ef-"))
    try:
        per_file = args.frames // args.files
        start = time.perf_counter()
        sources = []
        for index in range(args.files):
            frames = slab_frames(per_file, seed=index, size=(4, 4, 4), adsorbate="COH")
            ids = [(index * per_file + i, i, -40.0 - 0.01 * i) for i in range(per_file)]
            sources.append(write_s2ef_files(root / "src", str(index), frames, ids)[0])
        n_frames = per_file * args.files
        xz_bytes = sum(p.stat().st_size for p in (root / "src").iterdir())
        print(
            f"fixture: {n_frames} frames of {len(frames[0])} atoms in {args.files} files, "
            f"{xz_bytes / n_frames:.0f} xz bytes/frame ({time.perf_counter() - start:.1f} s)"
        )
        rates = {}
        for processes in args.processes:
            work = root / f"work-{processes}"
            tasks = [
                ShardTask("train", i, "extxyz", path, "bench", work)
                for i, path in enumerate(sources)
            ]
            start = time.perf_counter()
            run_shards(tasks, processes, progress=False)
            convert = time.perf_counter() - start
            start = time.perf_counter()
            out = root / f"train-{processes}.aselmdb"
            rows = merge_shards([t.shard for t in tasks], out, {"bench": True})
            merge = time.perf_counter() - start
            assert rows == n_frames
            per_frame = out.stat().st_size / n_frames
            rates[processes] = n_frames / convert
            print(
                f"processes {processes}: convert {n_frames / convert:.0f} frames/s "
                f"({convert:.1f} s), merge {n_frames / merge:.0f} frames/s ({merge:.2f} s), "
                f"aselmdb {per_frame:.0f} bytes/frame"
            )
        per_process = rates[min(rates)] / min(rates)
        merge_rate = n_frames / merge
        n = args.estimate_processes
        for name, splits in (("S2EF-2M", S2EF_2M), ("S2EF-All+MD", ALL_MD)):
            total = sum(splits.values())
            hours = total / (per_process * n) / 3600 + total / merge_rate / 3600
            disk = total * per_frame / 1e9
            print(
                f"estimate {name}: {total:,} frames, {n} processes: {hours:.1f} h "
                f"(convert + merge), {disk:.0f} GB of aselmdb (peak {2 * disk:.0f} GB "
                "while a split's shards and merged file coexist)"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
