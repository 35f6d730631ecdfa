"""Throughput of the OC20 S2EF converter per conversion job (extxyz.xz -> aselmdb shards).

Generates ``--frames`` OC20-sized slab frames (a 4 x 4 x 4 fcc(111) slab + a C-O-H adsorbate,
67 atoms) into ``--files`` ``*.extxyz.xz`` + ``*.txt.xz`` pairs, cuts the files into
``--groups`` contiguous groups as the pipeline's convert_group jobs do
(dens.data.oc_convert.group_tasks) and converts each group as one job would
(dens.data.oc_shards.run_shards with 1 and 2 worker processes), and prints frames/s per job,
the aselmdb bytes per frame and, from those, the number of conversion jobs and their hours for
S2EF-2M and S2EF-All+MD at the pipeline's default frames per job
(dens.data.oc_convert.frames_per_job). The shards are the split's files as they are (no merge).

    python benchmarks/convert_s2ef.py [--frames 2000] [--files 8] [--groups 2] [--processes 1 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from dens.data.oc_convert import frames_per_job, group_count, group_tasks
from dens.data.oc_shards import ShardTask, run_shards
from dens.pipeline.rehearsal.builders import slab_frames, write_s2ef_files

# config/archives.yaml frames, per archive (one conversion group count each)
S2EF_2M = {"train": 2_000_000, "val_id": 999_866, "val_ood_ads": 999_838,
           "val_ood_cat": 999_809, "val_ood_both": 999_944}  # fmt: skip
ALL_MD = {"train (All)": 133_934_018, "train (MD)": 38_315_405} | {
    k: v for k, v in S2EF_2M.items() if k != "train"
}
JOB_MINUTES = 60 * 12  # workflow/rules/common.smk JOB_SIZES["convert"] at the paper scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--groups", type=int, default=2, help="conversion jobs of the files")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
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
            times = []
            for group in range(args.groups):
                start = time.perf_counter()
                counts = run_shards(group_tasks(tasks, group, args.groups), processes, False)
                times.append((sum(counts.values()), time.perf_counter() - start))
            rows = sum(n for n, _ in times)
            assert rows == n_frames
            convert = sum(t for _, t in times)
            per_frame = sum(t.shard.stat().st_size for t in tasks) / n_frames
            rates[processes] = n_frames / convert
            jobs = ", ".join(f"{n / t:.0f}" for n, t in times)
            print(
                f"processes {processes}: convert {n_frames / convert:.0f} frames/s "
                f"({convert:.1f} s; per job of {args.groups}: {jobs} frames/s), "
                f"aselmdb {per_frame:.0f} bytes/frame"
            )
        rate = rates[min(rates)] / min(rates)  # one process per job, as the rule runs it
        per_job = frames_per_job(None, JOB_MINUTES)
        for name, archives in (("S2EF-2M", S2EF_2M), ("S2EF-All+MD", ALL_MD)):
            total = sum(archives.values())
            jobs = sum(group_count(frames, per_job) for frames in archives.values())
            longest = min(per_job, max(archives.values())) / rate / 3600
            disk = total * per_frame / 1e9
            print(
                f"estimate {name}: {total:,} frames in {jobs} conversion jobs of at most "
                f"{per_job:,} frames, each at most {longest:.1f} h at {rate:.0f} frames/s; "
                f"{disk:.0f} GB of aselmdb shards (moved into the split folders, no merge)"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
