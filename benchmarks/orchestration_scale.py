"""The system around the model at scale: planning, resume, per-video overhead, memory and files.

Synthetic manifests of N videos (10 expressions and 100 frame names each by default) go through
the real pipeline of ``jobs.infer`` (:func:`pipelines.inference.run.run_inference`: manifest reader,
frame-reading tasks, the model actor's Ray Data stage, the scoring/writing actors, the Parquet
writers) with a *null model*: an actor that returns a fixed mask for every frame at once. What is
left is the orchestration: what the driver plans and holds, what Ray Data moves, what the writers
write. The model itself is measured by ``benchmarks/inference_throughput.py``.

For each size it prints:

* **plan**: seconds and driver memory to plan N pending videos against an empty output;
* **resume**: seconds and driver memory to find that nothing is left, against an output that
  holds the N x 10 committed pairs in ``videos_per_file``-video parts (as ``infer`` writes them):
  first with no pair index (the parts of a killed run: every part is read, then folded into the
  index), then with the index that this left (what a finished run leaves), and against the same
  output after ``jobs.compact``; each also times the one-model check of ``preflight``
  (``resume.other_models``), which reads the same index;
* **run**: the whole pipeline on N pending videos: seconds per video (the orchestration overhead),
  driver peak RSS growth, object store peak, and the files written (count and bytes per table).

Planning and resume run twice, in a fresh process each: ``reference`` (the per-row Python path of
:mod:`benchmarks.per_row_reference`: ``done_pairs`` from every scores part into a set of tuples,
``inference.load_input`` + ``plan_work`` into JSON items) and ``ours``
(:mod:`pipelines.inference.planning`: Arrow anti-joins on the key columns); the ratio is printed. A
fit of seconds and memory against N (``a + b * N``) is extrapolated to 1M and 10M videos.

Run (CPU; 1k and 10k take a few minutes on 2 cores, 100k pipeline runs take much longer, so the
pipeline runs have their own size list)::

    python -m benchmarks.orchestration_scale                       # plan/resume 1k,10k,100k; run 1k,10k
    python -m benchmarks.orchestration_scale --sizes 1000 --run-sizes 1000
    python -m benchmarks.orchestration_scale --sizes 100000 --run-sizes   # resume at 1M pairs only
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

MIB = 2**20
REPO = Path(__file__).resolve().parents[1]
DATASET, SPLIT = "bench", "valid"
HEIGHT, WIDTH = 8, 8


# --------------------------------------------------------------------------- synthetic inputs


def video_id(i: int) -> str:
    return f"vid{i:08d}"


def write_manifest(path: Path, *, num_videos: int, num_exps: int, num_frames: int, frames_uri: str,
                   chunk_videos: int = 2000) -> None:
    """A MANIFEST_SCHEMA Parquet of ``num_videos`` videos (rows grouped by video, as ``write_manifest`` writes)."""
    from schemas import MANIFEST_SCHEMA

    names = np.array([f"{t:05d}" for t in range(num_frames)], dtype=object)
    with pq.ParquetWriter(path, MANIFEST_SCHEMA, compression="zstd") as writer:
        for start in range(0, num_videos, chunk_videos):
            count = min(chunk_videos, num_videos - start)
            rows = count * num_exps
            vids = np.repeat(np.array([video_id(start + i) for i in range(count)], dtype=object), num_exps)
            exps = np.tile(np.array([str(e) for e in range(num_exps)], dtype=object), count)
            frame_names = pa.ListArray.from_arrays(
                pa.array(np.arange(rows + 1, dtype=np.int32) * num_frames),
                pa.array(np.tile(names, rows), type=pa.string()))
            ids = pa.ListArray.from_arrays(pa.array(np.arange(rows + 1, dtype=np.int32)),
                                           pa.array(np.ones(rows, np.int64)))
            table = pa.table({
                "dataset": pa.array([DATASET] * rows), "split": pa.array([SPLIT] * rows),
                "video_id": pa.array(vids, type=pa.string()), "video_uri": pa.nulls(rows, pa.string()),
                "frames_uri": pa.array([frames_uri] * rows), "frame_names": frame_names,
                "height": pa.array(np.full(rows, HEIGHT, np.int32)), "width": pa.array(np.full(rows, WIDTH, np.int32)),
                "exp_id": pa.array(exps, type=pa.string()),
                "expression": pa.array([f"the object number {e % num_exps}" for e in range(rows)]),
                "expression_type": pa.array(["referring"] * rows), "type_id": pa.array(np.zeros(rows, np.int8)),
                "obj_ids": ids, "anno_ids": ids,
                "annotation_uri": pa.nulls(rows, pa.string()), "foreground_uri": pa.nulls(rows, pa.string()),
            })
            writer.write_table(table.cast(MANIFEST_SCHEMA))


def write_frames(folder: Path, num_frames: int) -> None:
    """Tiny JPEG frames shared by every synthetic video (read only with ``--decode``)."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for t in range(num_frames):
        cv2.imwrite(str(folder / f"{t:05d}.jpg"), rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))


def write_done_output(out: Path, *, num_videos: int, num_exps: int, videos_per_file: int) -> int:
    """An output whose scores table holds every pair of the manifest, one part per ``videos_per_file`` videos."""
    from pipelines.io.writers import batch_id_for
    from schemas import PARTITION_COLUMNS, SCORES_SCHEMA

    folder = out / "scores" / f"dataset={DATASET}" / f"split={SPLIT}"
    folder.mkdir(parents=True, exist_ok=True)
    file_schema = pa.schema([f for f in SCORES_SCHEMA if f.name not in PARTITION_COLUMNS])
    rows = videos_per_file * num_exps
    template = {
        "exp_id": pa.array([str(e) for e in range(num_exps)] * videos_per_file),
        "expression": pa.array(["the object"] * rows), "type_id": pa.array(np.zeros(rows, np.int8)),
        "expression_type": pa.array(["referring"] * rows), "num_frames": pa.array(np.full(rows, 100, np.int32)),
        "num_objects": pa.array(np.ones(rows, np.int32)),
        **{c: pa.nulls(rows, pa.float64()) for c in ("j", "f", "jf", "accuracy", "robustness")},
        "keyframe_index": pa.array(np.zeros(rows, np.int32)), "mean_target_area": pa.nulls(rows, pa.float64()),
        "seconds": pa.array(np.zeros(rows)), "run_id": pa.array(["bench"] * rows),
        "model": pa.array(["tiny"] * rows), "code_version": pa.array(["bench"] * rows),
    }
    files = 0
    for start in range(0, num_videos, videos_per_file):
        count = min(videos_per_file, num_videos - start)
        vids = [video_id(start + i) for i in range(count) for _ in range(num_exps)]
        columns = {name: array.slice(0, count * num_exps) for name, array in template.items()}
        table = pa.table({"video_id": pa.array(vids), **columns}).select(file_schema.names).cast(file_schema)
        batch = batch_id_for("bench", [(v,) for v in vids])
        pq.write_table(table, folder / f"part-{batch}.parquet", compression="zstd")
        files += 1
    return files


# --------------------------------------------------------------------------- measuring


class PeakSampler:
    """Peak RSS of this process (and the object store's bytes in use, when Ray runs) in a thread."""

    def __init__(self, interval: float = 0.05, ray_address: str | None = None):
        import psutil

        self._proc = psutil.Process()
        self.start_rss = self._proc.memory_info().rss
        self.peak_rss = self.start_rss
        self.peak_store = 0
        self._interval = interval
        self._ray_address = ray_address
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _store_bytes(self, state: Any) -> int:
        from ray._private.internal_api import get_memory_info_reply

        return int(get_memory_info_reply(state).store_stats.object_store_bytes_used)

    def _run(self) -> None:
        state, last_store = None, 0.0
        if self._ray_address:
            try:
                from ray._private.internal_api import get_state_from_address

                state = get_state_from_address(self._ray_address)
            except Exception:  # noqa: BLE001 - the object store figure is then missing
                state = None
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)
            if state is not None and time.monotonic() - last_store > 0.5:
                last_store = time.monotonic()
                try:
                    self.peak_store = max(self.peak_store, self._store_bytes(state))
                except Exception:  # noqa: BLE001
                    state = None
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)

    @property
    def growth_mib(self) -> float:
        return (self.peak_rss - self.start_rss) / MIB


def _cfg(out: Path, manifest: Path, *, videos_per_file: int, decode: bool) -> Any:
    from pipelines.inference.config import ComputeConfig, InferenceConfig

    compute = ComputeConfig(num_actors=1, num_cpus_per_actor=0.5, read_num_cpus=0.25, read_concurrency=2,
                            num_writers=1, writer_num_cpus=0.5, videos_per_file=videos_per_file,
                            max_inline_frame_bytes=512 * MIB if decode else 1)
    return InferenceConfig(out=str(out), manifest=str(manifest), preset="tiny", seed=0, device="cpu",
                           code_version="bench", progress_every=10**9, compute=compute)


def child_plan(impl: str, out: Path, manifest: Path, videos_per_file: int) -> dict[str, Any]:
    """Plan ``manifest`` against ``out`` in this (fresh) process: seconds, driver memory, counts."""
    import gc

    # Every module a driver imports anyway, before the baseline RSS: only the planning counts.
    import pyarrow.dataset  # noqa: F401
    import pipelines.inference.run  # noqa: F401
    import pipelines.inference.resume  # noqa: F401
    import vrshq.data  # noqa: F401

    cfg = _cfg(out, manifest, videos_per_file=videos_per_file, decode=False)
    if impl == "reference":
        from benchmarks.per_row_reference import done_pairs, plan_work
        from pipelines.inference.run import load_input

        gc.collect()
        with PeakSampler() as peak:
            started = time.perf_counter()
            done = done_pairs(cfg.out)
            resumed = time.perf_counter()
            records, _ = load_input(cfg)
            plan = plan_work(records, done=done)
            del records
            seconds = time.perf_counter() - started
        return {"seconds": seconds, "done_seconds": resumed - started, "driver_mib": peak.growth_mib,
                "pairs_done": plan.pairs_done, "pairs_pending": plan.pairs_pending, "videos_pending": len(plan.items)}
    from pipelines.inference.planning import plan_manifest
    from pipelines.inference.resume import other_models
    from pipelines.io.pair_index import INDEX_FOLDER

    index_before = len(list((out / INDEX_FOLDER).glob("pairs-*.parquet"))) if (out / INDEX_FOLDER).exists() else 0
    gc.collect()
    with PeakSampler() as peak:
        started = time.perf_counter()
        others = other_models(cfg.out, "tiny")  # preflight's one-model check: the index's model column
        checked = time.perf_counter()
        plan = plan_manifest(str(manifest), cfg.out, fold_index=True)  # as infer plans, under its lock
        seconds = time.perf_counter() - checked
    assert others == [], others
    return {"seconds": seconds, "done_seconds": plan.seconds_done, "check_seconds": checked - started,
            "driver_mib": peak.growth_mib, "index_files_before": index_before,
            "pairs_done": plan.pairs_done, "pairs_pending": plan.pairs_pending, "videos_pending": plan.videos_pending}


def measure_plan(impl: str, out: Path, manifest: Path, videos_per_file: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "benchmarks.orchestration_scale", "--child-plan", impl, str(out),
                             str(manifest), str(videos_per_file)], cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        return {"error": (result.stderr or result.stdout).strip().splitlines()[-1:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


class NullModelActor:
    """The model stage with a null model: a fixed empty mask for every frame of every pending expression.

    Same constructor, input (the frame reader's rows) and output (``RESULT_SCHEMA``) as
    :class:`pipelines.inference.segment_actor.SegmentActor`; nothing is decoded or computed.
    """

    def __init__(self, cfg: Any, *, max_side: int):
        from pipelines.io.rle import encode_masks

        self._counts = encode_masks(np.zeros((1, HEIGHT, WIDTH), dtype=bool))[0]

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        from pipelines.inference.segment_actor import RESULT_SCHEMA
        from pipelines.inference.video_io import item_from_json

        rows = []
        for i in range(len(batch["item_json"])):
            video = item_from_json(str(batch["item_json"][i]))
            frames = len(video.frame_names)
            rows.append({
                "dataset": video.dataset, "split": video.split, "video_id": video.video_id,
                "item_json": str(batch["item_json"][i]), "height": HEIGHT, "width": WIDTH,
                "results": [{"exp_id": e.exp_id, "rle_counts": [self._counts] * frames,
                             "object_scores": [0.0] * frames, "keyframe_index": 0, "seconds": 0.0}
                            for e in video.expressions],
                "errors_json": "[]",
            })
        return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


class _ItemsPlan(list):
    """The per-row planner's result in the shape ``run_inference`` reads: the work-item list (which
    :func:`reference_build_dataset` turns into one block per video) with the plan's counts."""

    def __init__(self, plan: Any):
        super().__init__(plan.items)
        self.pairs_total, self.pairs_done, self.pairs_pending = plan.pairs_total, plan.pairs_done, plan.pairs_pending
        self.videos_pending = len(plan.items)


def reference_plan(cfg: Any, run_id: str, loaded: tuple[list, list] | None = None) -> tuple[Any, list]:
    """``pipelines.inference.run._plan`` as it was: every manifest row and done pair as Python objects."""
    from benchmarks.per_row_reference import done_pairs, plan_work
    from pipelines.inference.run import load_input

    records, errors = loaded if loaded is not None else load_input(cfg)
    plan = plan_work(records, done=done_pairs(cfg.out, storage_options=cfg.storage_options),
                     max_videos=cfg.max_videos)
    return _ItemsPlan(plan), errors


def reference_build_dataset(items: list, cfg: Any, *, build: Any, **kwargs: Any) -> Any:
    """The pipeline as it was fed: the per-row planner's work items, one block per video, then the same stages
    (``build``: ``pipelines.inference.run.build_dataset``)."""
    import ray.data

    return build(ray.data.from_items(list(items), override_num_blocks=max(1, len(items))), cfg, **kwargs)


def files_of(out: Path) -> dict[str, tuple[int, int]]:
    """Table name -> (Parquet files, bytes)."""
    result = {}
    for table in ("masks", "scores", "errors"):
        files = [p for p in (out / table).rglob("*.parquet")] if (out / table).exists() else []
        result[table] = (len(files), sum(p.stat().st_size for p in files))
    return result


def measure_run(out: Path, manifest: Path, *, num_videos: int, videos_per_file: int, decode: bool,
                ray_address: str, impl: str = "ours") -> dict[str, Any]:
    """The whole pipeline on ``num_videos`` pending videos with the null model, in this driver.

    ``impl="reference"`` plans with the per-row planner and feeds Ray Data one block per video.
    """
    import pipelines.inference.run as inference
    import pipelines.inference.segment_actor as segment_actor
    from pipelines.inference.run import run_inference
    from vrshq.builders import tiny_config

    cfg = _cfg(out, manifest, videos_per_file=videos_per_file, decode=decode)
    original, original_plan, original_build = segment_actor.SegmentActor, inference._plan, inference.build_dataset
    segment_actor.SegmentActor = NullModelActor  # what build_dataset puts in the model stage
    if impl == "reference":
        inference._plan = reference_plan
        inference.build_dataset = functools.partial(reference_build_dataset, build=original_build)
    try:
        with PeakSampler(ray_address=ray_address) as peak:
            started = time.perf_counter()
            summary = run_inference(cfg, model_config=tiny_config(), log=lambda _: None)
            seconds = time.perf_counter() - started
    finally:
        segment_actor.SegmentActor, inference._plan, inference.build_dataset = original, original_plan, original_build
    assert summary.ok and summary.videos_processed == num_videos, summary
    return {"seconds": seconds, "ms_per_video": 1000 * seconds / num_videos, "driver_mib": peak.growth_mib,
            "store_mib": peak.peak_store / MIB, "files": files_of(out), "masks_rows": summary.masks_rows}


def warm_up(work: Path, *, num_exps: int, num_frames: int, videos_per_file: int, decode: bool,
            ray_address: str) -> None:
    """One small run first, so Ray's worker start-up and imports are not charged to the first size."""
    manifest = work / "warmup.parquet"
    write_manifest(manifest, num_videos=16, num_exps=num_exps, num_frames=num_frames, frames_uri=str(work / "frames"))
    measure_run(work / "warmup-out", manifest, num_videos=16, videos_per_file=videos_per_file, decode=decode,
                ray_address=ray_address)
    shutil.rmtree(work / "warmup-out", ignore_errors=True)


def fit(sizes: list[int], values: list[float]) -> tuple[float, float]:
    """Least-squares ``a + b * n`` (b: the cost per video)."""
    if len(sizes) < 2:
        return 0.0, values[0] / sizes[0]
    b, a = np.polyfit(np.asarray(sizes, float), np.asarray(values, float), 1)
    return float(a), float(b)


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000, 100000],
                        help="videos per manifest for planning and resume")
    parser.add_argument("--run-sizes", type=int, nargs="*", default=[1000, 10000],
                        help="videos of the whole-pipeline runs (each also needs to be in --sizes' work dir)")
    parser.add_argument("--exps", type=int, default=10, help="expressions per video")
    parser.add_argument("--frames", type=int, default=100, help="frame names per video")
    parser.add_argument("--videos-per-file", type=int, default=8, help="as compute.videos_per_file")
    parser.add_argument("--impls", nargs="*", default=["reference", "ours"], help="planners to measure")
    parser.add_argument("--reference-max", type=int, default=10000,
                        help="measure the reference planner only up to this many videos (it holds every frame name "
                             "of the manifest as Python objects: about 10 GB at 100k videos)")
    parser.add_argument("--no-compacted", dest="compacted", action="store_false",
                        help="skip resume against a compacted copy of the done output")
    parser.add_argument("--decode", action="store_true",
                        help="frame readers decode real (8x8) JPEGs; default: frames passed by reference, "
                             "so only orchestration is measured")
    parser.add_argument("--work", default=None, help="work folder (default: a temporary one, removed)")
    parser.add_argument("--child-plan", nargs=4, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_plan:
        impl, out, manifest, vpf = args.child_plan
        print(json.dumps(child_plan(impl, Path(out), Path(manifest), int(vpf))))
        return 0

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="vrshq-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    write_frames(work / "frames", args.frames)
    plan_rows, run_rows, compacted_rows = [], [], []
    print(f"work folder {work}; {args.exps} expressions and {args.frames} frame names per video, "
          f"{args.videos_per_file} videos per part; cpu count {os.cpu_count()}", flush=True)
    all_sizes = sorted(set(args.sizes) | set(args.run_sizes))
    for n in all_sizes:
        manifest = work / f"manifest-{n}.parquet"
        if not manifest.exists():
            write_manifest(manifest, num_videos=n, num_exps=args.exps, num_frames=args.frames,
                           frames_uri=str(work / "frames"))
        if n not in args.sizes:
            continue
        done = work / f"done-{n}"
        if not done.exists():
            write_done_output(done, num_videos=n, num_exps=args.exps, videos_per_file=args.videos_per_file)
        empty = work / f"empty-{n}"
        empty.mkdir(exist_ok=True)
        for impl in args.impls:
            if impl == "reference" and n > args.reference_max:
                continue
            plan = measure_plan(impl, empty, manifest, args.videos_per_file)
            indexed = None
            if impl == "ours":  # the parts as a killed run leaves them: no index yet (this resume folds one)
                shutil.rmtree(done / "_index", ignore_errors=True)
            resume = measure_plan(impl, done, manifest, args.videos_per_file)
            if impl == "ours":  # what a finished run (or the resume above) leaves: the parts and their index
                indexed = measure_plan(impl, done, manifest, args.videos_per_file)
            plan_rows.append((n, impl, plan, resume, indexed))
            print(f"  {n} videos {impl}: plan {plan}  resume {resume}  resume, indexed {indexed}", flush=True)
        if "ours" in args.impls and args.compacted:
            compacted = work / f"done-{n}-compacted"
            if not compacted.exists():
                shutil.copytree(done, compacted)
                from pipelines.io.compaction import compact_output

                started = time.perf_counter()
                compact_output(str(compacted), log=lambda _: None)
                print(f"  compacted {n * args.exps} pairs' scores in {time.perf_counter() - started:.1f} s", flush=True)
            resume = measure_plan("ours", compacted, manifest, args.videos_per_file)
            compacted_rows.append((n, resume))
            print(f"  {n} videos ours, compacted output: resume {resume}", flush=True)

    if args.run_sizes:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                 object_store_memory=500 * MIB, _temp_dir=tempfile.mkdtemp(prefix="vrb", dir="/tmp"))
        try:
            address = ray.get_runtime_context().gcs_address
            warm_up(work, num_exps=args.exps, num_frames=args.frames, videos_per_file=args.videos_per_file,
                    decode=args.decode, ray_address=address)
            for n in sorted(args.run_sizes):
                for impl in args.impls:
                    if impl == "reference" and n > args.reference_max:
                        continue
                    out = work / f"run-{n}"
                    shutil.rmtree(out, ignore_errors=True)
                    run = measure_run(out, work / f"manifest-{n}.parquet", num_videos=n, impl=impl,
                                      videos_per_file=args.videos_per_file, decode=args.decode, ray_address=address)
                    run_rows.append((n, impl, run))
                    print(f"  {n} videos run {impl}: {run}", flush=True)
                    shutil.rmtree(out, ignore_errors=True)
        finally:
            ray.shutdown()
    report(plan_rows, run_rows, compacted_rows, exps=args.exps)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(plan_rows: list, run_rows: list, compacted_rows: list, *, exps: int) -> None:
    print("\nplanning (empty output) and resume (output holding every pair), fresh process each:")
    print("(resume: no pair index, every scores part read; indexed: the index a finished run leaves; "
          "check: preflight's one-model check, s)")
    print(f"{'videos':>8} {'pairs':>9} {'impl':>10} {'plan s':>8} {'plan MiB':>9} {'resume s':>9} "
          f"{'resume MiB':>10} {'read done s':>11} {'check s':>8} {'indexed s':>10} {'indexed MiB':>11} "
          f"{'check s':>8}")
    by_impl: dict[str, list] = {}
    for n, impl, plan, resume, indexed in plan_rows:
        by_impl.setdefault(impl, []).append((n, plan, resume))
        indexed = indexed or {}
        errors = [r["error"] for r in (plan, resume, indexed) if "error" in r]
        print(f"{n:>8} {n * exps:>9} {impl:>10} {_fmt(plan.get('seconds')):>8} "
              f"{_fmt(plan.get('driver_mib'), '.0f'):>9} "
              f"{_fmt(resume.get('seconds')):>9} {_fmt(resume.get('driver_mib'), '.0f'):>10} "
              f"{_fmt(resume.get('done_seconds')):>11} {_fmt(resume.get('check_seconds')):>8} "
              f"{_fmt(indexed.get('seconds')):>10} {_fmt(indexed.get('driver_mib'), '.0f'):>11} "
              f"{_fmt(indexed.get('check_seconds')):>8}" + (f"  {errors}" if errors else ""))
    if "reference" in by_impl and "ours" in by_impl:
        ref = {n: (p, r) for n, p, r in by_impl["reference"]}
        for n, plan, resume in by_impl["ours"]:
            if n in ref and "seconds" in plan and "seconds" in ref[n][0]:
                print(f"  {n} videos: reference/ours time: plan {ref[n][0]['seconds'] / plan['seconds']:.1f}x, "
                      f"resume {ref[n][1]['seconds'] / resume['seconds']:.1f}x; memory: plan "
                      f"{ref[n][0]['driver_mib'] / max(plan['driver_mib'], 1):.1f}x, resume "
                      f"{ref[n][1]['driver_mib'] / max(resume['driver_mib'], 1):.1f}x")
    for impl, rows in by_impl.items():
        rows = [r for r in rows if "seconds" in r[1] and "seconds" in r[2]]
        if not rows:
            continue
        sizes = [n for n, _, _ in rows]
        parts = []
        for what, values in (("plan s", [p["seconds"] for _, p, _ in rows]),
                             ("plan MiB", [p["driver_mib"] for _, p, _ in rows]),
                             ("resume s", [r["seconds"] for _, _, r in rows]),
                             ("resume MiB", [r["driver_mib"] for _, _, r in rows])):
            a, b = fit(sizes, values)
            parts.append(f"{what}: 1M videos {a + b * 1e6:,.1f}, 10M videos {a + b * 1e7:,.1f}")
        print(f"  fit a + b*N, {impl}: " + "; ".join(parts))
    if compacted_rows:
        print("\nresume against the same output after jobs.compact (scores in one file per partition):")
        for n, resume in compacted_rows:
            print(f"{n:>8} {n * exps:>9} {'ours':>10} resume {_fmt(resume.get('seconds'))} s, "
                  f"{_fmt(resume.get('driver_mib'), '.0f')} MiB "
                  f"(reading the done keys {_fmt(resume.get('done_seconds'))} s; one-model check "
                  f"{_fmt(resume.get('check_seconds'))} s)")
    if run_rows:
        print("\nwhole pipeline, null model (pending videos from an empty output):")
        print(f"{'videos':>8} {'impl':>10} {'seconds':>8} {'ms/video':>9} {'driver MiB':>10} {'store MiB':>9} "
              f"{'masks files':>11} {'masks MiB':>9} {'scores files':>12} {'scores KiB':>10}")
        for n, impl, run in run_rows:
            files = run["files"]
            print(f"{n:>8} {impl:>10} {run['seconds']:>8.1f} {run['ms_per_video']:>9.2f} {run['driver_mib']:>10.0f} "
                  f"{run['store_mib']:>9.0f} {files['masks'][0]:>11} {files['masks'][1] / MIB:>9.1f} "
                  f"{files['scores'][0]:>12} {files['scores'][1] / 1024:>10.0f}")
        by_size: dict[int, dict[str, Any]] = {}
        for n, impl, run in run_rows:
            by_size.setdefault(n, {})[impl] = run
        for n, runs in sorted(by_size.items()):
            if {"reference", "ours"} <= set(runs):
                ratio = runs["reference"]["seconds"] / runs["ours"]["seconds"]
                print(f"  {n} videos: reference/ours seconds {ratio:.2f}x, "
                      f"driver memory {runs['reference']['driver_mib'] / max(runs['ours']['driver_mib'], 1):.1f}x")
        for impl in sorted({impl for _, impl, _ in run_rows}):
            rows = [(n, run) for n, i, run in run_rows if i == impl]
            sizes = [n for n, _ in rows]
            a, b = fit(sizes, [r["seconds"] for _, r in rows])
            am, bm = fit(sizes, [r["driver_mib"] for _, r in rows])
            print(f"  fit {impl}: {b * 1000:.2f} ms/video + {a:.1f} s fixed -> 1M videos {(a + b * 1e6) / 3600:.1f} h, "
                  f"10M videos {(a + b * 1e7) / 3600:.1f} h of orchestration on this machine; driver "
                  f"{am + bm * 1e6:,.0f} MiB at 1M, {am + bm * 1e7:,.0f} MiB at 10M")
        n_last, _, last = run_rows[-1]
        files = last["files"]
        print(f"  files at 1M videos ({files['masks'][0] / n_last:.3f} masks and scores parts per video): masks "
              f"{files['masks'][0] / n_last * 1e6:,.0f} ({files['masks'][1] / n_last * 1e6 / 2**30:,.1f} GiB with this "
              f"null model's constant masks), scores {files['scores'][0] / n_last * 1e6:,.0f} "
              f"({files['scores'][1] / n_last * 1e6 / 2**30:,.2f} GiB)")

if __name__ == "__main__":
    sys.exit(main())
