"""Inference throughput: our Ray Data pipeline against the official serial loop (docs/performance.md).

One run measures, on one synthetic ReVOS-shaped workload (:mod:`benchmarks.workload`):

* **serial** - the official evaluation loop rebuilt from our model (:mod:`benchmarks.serial_reference`):
  one expression at a time, frames decoded again, CLIP-336 over all frames, one MLLM forward, a new
  SAM2 encoding per TKS candidate, all frames encoded again, single-object tracking. Slow on 7B, so
  it runs for ``--budget-s`` seconds on expressions taken round-robin over the videos and is
  extrapolated to the workload (the table says so, and from how many);
* **ours (model only)** - ``VrshqModel.segment_video`` in this process, frames already decoded (the
  upper bound of the pipeline);
* **ours (pipeline)** - :func:`pipelines.inference.run.run_inference` end to end (JPEG decode in CPU
  tasks, the model actor, RLE, Parquet writes), start to finish, plus its steady state (on a GPU:
  from the first to the last nvidia-smi sample >= 50% busy, i.e. without actor start-up and model
  load);
* **SAM2 encoder bound** - the SAM2 image encoder alone at batch 8: no pipeline that encodes each
  frame once can exceed it in frames/s (its masks/s = frames/s x masks per frame of the workload);
* **agreement** - per-mask IoU of the pipeline's and the model-only masks against the serial ones
  (same weights, same inputs), on the expressions the serial path ran.

GPU busy % is the mean ``nvidia-smi`` utilisation while each path ran (:mod:`benchmarks.gpu_busy`).

Run::

    python -m benchmarks.inference_throughput --preset vrshq-7b --device cuda --budget-s 300
    python -m benchmarks.inference_throughput --preset tiny --device cpu --videos 2 --min-frames 8 \\
        --max-frames 8 --height 96 --width 128 --min-expressions 2 --max-expressions 3 --budget-s 20
    python -m benchmarks.inference_throughput --dry-run       # every code path, tiny, CPU, ~1-2 min

Under a per-command time limit, run the paths in separate commands on the same ``--output-dir``;
the second merges the first's rows and compares its masks with the saved serial masks::

    python -m benchmarks.inference_throughput --preset vrshq-7b --device cuda --paths bound,serial,model --budget-s 180
    python -m benchmarks.inference_throughput --preset vrshq-7b --device cuda --paths pipeline

``--preset vrshq-7b`` without LLaMA tokenizer files runs ``vrshq-7b-tinytok`` (same sizes, tokenizer
built in code: :mod:`benchmarks.presets`). Output: the table on stdout, ``results.parquet`` and
``results.json`` (and a profile with ``--profile``) in ``--output-dir``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.gpu_busy import GpuBusySampler
from benchmarks.local_paths import (
    BOUND, MODEL_ONLY, PIPELINE, PIPELINE_STEADY, SERIAL, LocalPaths, busy_mean, decode_rle,
)
from benchmarks.throughput_report import (
    Agreement, ResultRow, decision_breakdown, format_breakdown, format_table, git_sha, mask_agreement, per_mask_iou,
    write_rows,
)
from benchmarks.roofline_report import pipeline_split_lines, roofline_lines
from benchmarks.workload import Workload, WorkloadConfig, write_workload

__all__ = ["BenchmarkConfig", "main", "pipeline_split_lines", "run_benchmark"]

_LOG = logging.getLogger("benchmarks.inference_throughput")
_BURST_GAP_S = 0.5
_BUSY_PERCENT = 50
_PROGRESS = re.compile(r"progress: \d+/\d+ videos, (\d+) expressions scored")
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class BenchmarkConfig:
    """Everything one benchmark run needs (built from the command line by :func:`main`).

    Attributes:
        preset: model preset (``tiny``, ``vrshq-7b``); random init from ``seed``.
        device: ``cpu`` or ``cuda`` (``cuda:<i>``).
        workload: the synthetic workload.
        workdir: where the workload and the pipeline output go.
        output_dir: where results.parquet / results.json (and the profile) go.
        budget_s: seconds the serial path may run before it is extrapolated.
        min_serial_expressions: expressions the serial path runs even past the budget.
        serial_decode_passes: frame decodes per expression on the serial path (official: 3).
        max_side: the pipeline's working resolution (None: SAM2 image size); the in-process paths
            resize the same way so that all paths see the same frames.
        encoder_batch, encoder_iters: SAM2 encoder bound measurement.
        num_actors, read_concurrency, num_writers, cpus_per_actor: Ray Data compute of the pipeline.
        ray_address: ``local`` (a private local cluster) or the address of a running cluster.
        ray_num_cpus: CPUs of the private local cluster (None: all).
        paths: which paths to run (subset of serial, model, pipeline, bound).
        profile: ``none``, ``torch`` (torch.profiler) or ``cprofile``: profile one ``segment_video`` call.
        sdpa: attention kernels of the in-process paths: None (the model's default,
            ``VrshqModel.inference_sdpa_backends``), ``pytorch`` (PyTorch's own choice, cuDNN
            included) or a comma list of flash, efficient, math, cudnn.
        precision: ``bf16`` (the model as deployed: bf16 weights and autocast on CUDA) or ``fp32``
            (float32 weights and compute, no TF32) for the in-process paths; ``fp32`` checks that
            batched and serial masks agree when rounding is small (the pipeline path stays bf16).
        score_on: the pipeline's ``compute.score_on``: ``actor`` (J, F, A/R counts on the model actor's
            device) or ``writer`` (on the writers' CPUs).
        seed: model init seed.
    """

    preset: str = "vrshq-7b"
    device: str = "cuda"
    workload: WorkloadConfig = WorkloadConfig()
    workdir: str = "out/bench_inference"
    output_dir: str = "out/bench_inference"
    budget_s: float = 300.0
    min_serial_expressions: int = 2
    serial_decode_passes: int = 1
    max_side: int | None = None
    encoder_batch: int = 8
    encoder_iters: int = 20
    num_actors: int = 1
    read_concurrency: int = 4
    num_writers: int = 2
    cpus_per_actor: float = 2.0
    read_num_cpus: float = 1.0
    writer_num_cpus: float = 1.0
    ray_address: str = "local"
    ray_num_cpus: int | None = None
    workload_workers: int = 8
    paths: tuple[str, ...] = ("serial", "model", "pipeline", "bound")
    profile: str = "none"
    sdpa: str | None = None
    precision: str = "bf16"
    score_on: str = "actor"
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.score_on not in ("actor", "writer"):
            problems.append(f"score_on={self.score_on!r} must be actor or writer")
        if not (self.device in ("cpu", "cuda") or self.device.startswith("cuda:")):
            problems.append(f"device={self.device!r} must be cpu, cuda or cuda:<i>")
        if self.budget_s <= 0:
            problems.append(f"budget_s must be > 0, got {self.budget_s}")
        unknown = sorted(set(self.paths) - {"serial", "model", "pipeline", "bound"})
        if unknown or not self.paths:
            problems.append(f"paths {list(self.paths)} must be a non-empty subset of serial, model, pipeline, bound")
        if self.precision not in ("bf16", "fp32"):
            problems.append(f"precision={self.precision!r} must be bf16 or fp32")
        if self.precision == "fp32" and "pipeline" in self.paths:
            problems.append("precision=fp32 is for the in-process paths; the pipeline always runs as deployed (bf16)")
        if self.profile not in ("none", "torch", "cprofile"):
            problems.append(f"profile={self.profile!r} must be none, torch or cprofile")
        for name in ("min_serial_expressions", "serial_decode_passes", "encoder_batch", "encoder_iters", "num_actors",
                     "read_concurrency", "num_writers", "workload_workers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be an int >= 1, got {value!r}")
        if problems:
            raise ValueError("; ".join(problems))


# ------------------------------------------------------------------------------------------- helpers


def _device_name(device: Any) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _inference_config(cfg: BenchmarkConfig, workload: Workload, preset: str, output: str) -> Any:
    from pipelines.inference.config import ComputeConfig, InferenceConfig

    compute = ComputeConfig(
        num_actors=cfg.num_actors, num_cpus_per_actor=cfg.cpus_per_actor, read_num_cpus=cfg.read_num_cpus,
        read_concurrency=cfg.read_concurrency, num_writers=cfg.num_writers, writer_num_cpus=cfg.writer_num_cpus,
        videos_per_file=2, num_gpus_per_actor=None if cfg.device != "cpu" else 0.0, score_on=cfg.score_on,
    )
    return InferenceConfig(out=output, manifest=workload.manifest_uri, preset=preset, seed=cfg.seed,
                           device=cfg.device, max_side=cfg.max_side, progress_every=1, compute=compute,
                           code_version=git_sha(_REPO_ROOT))


# ------------------------------------------------------------------------------------- the pipeline


def _run_pipeline(cfg: BenchmarkConfig, workload: Workload, infer_cfg: Any, sampler: GpuBusySampler
                  ) -> tuple[ResultRow, ResultRow | None, str]:
    """``run_inference`` on a private Ray cluster; returns the end-to-end and steady-state rows."""
    import ray

    from benchmarks.presets import ray_runtime_env
    from pipelines.inference.run import run_inference

    output = infer_cfg.out
    shutil.rmtree(output, ignore_errors=True)  # a fresh output: otherwise the run resumes and skips everything
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO_ROOT, os.environ.get("PYTHONPATH", "")) if p)
    init_kwargs: dict[str, Any] = {"address": cfg.ray_address, "runtime_env": ray_runtime_env(_REPO_ROOT),
                                   "logging_level": logging.WARNING}
    if cfg.ray_address == "local":
        init_kwargs.update(num_cpus=cfg.ray_num_cpus, include_dashboard=False)
    progress: list[tuple[float, int]] = []  # (time, expressions scored so far)

    def log(line: str) -> None:
        match = _PROGRESS.match(line)
        if match:
            progress.append((time.monotonic(), int(match.group(1))))
        _LOG.info("pipeline: %s", line)

    ray.init(**init_kwargs)
    try:
        start = time.monotonic()
        summary = run_inference(infer_cfg, log=log)
        end = time.monotonic()
    finally:
        ray.shutdown()
    if not summary.ok:
        raise RuntimeError(f"the pipeline run did not finish cleanly: {summary}; see {output}/errors/")
    if summary.masks_rows != workload.num_masks:
        raise RuntimeError(f"the pipeline wrote {summary.masks_rows} masks, the workload has {workload.num_masks}")
    row = ResultRow(PIPELINE, seconds=end - start, masks=workload.num_masks, frames=workload.num_frames,
                    gpu_busy_percent=busy_mean(sampler, start, end, all_gpus=True),
                    note="start to finish incl. actor start-up, model load, JPEG decode, RLE, Parquet",
                    extra={"summary": dataclasses.asdict(summary)})
    steady = _steady_row(workload, sampler, start, end, progress)
    return row, steady, output


def _steady_row(workload: Workload, sampler: GpuBusySampler, start: float, end: float,
                progress: list[tuple[float, int]]) -> ResultRow | None:
    """The pipeline's steady state: without Ray/actor start-up and model load.

    With GPU samples: from the first to the last sample at >= ``_BUSY_PERCENT`` utilisation (all the
    model's work lies inside; the model build's short kernels barely register), for all masks.
    Without (CPU): from the first to the last burst of finished videos the driver saw, for the
    expressions finished after the first burst (the driver may see all videos in one burst: then
    there is no steady row).
    """
    samples = [(t, v) for t, v in sampler.samples() if start <= t <= end]
    busy = [t for t, v in samples if v >= _BUSY_PERCENT]
    if len(busy) >= 2:
        return ResultRow(PIPELINE_STEADY, seconds=busy[-1] - busy[0], masks=workload.num_masks,
                         frames=workload.num_frames,
                         gpu_busy_percent=busy_mean(sampler, busy[0], busy[-1], all_gpus=True),
                         note=f"first to last GPU sample >= {_BUSY_PERCENT}% busy (excludes start-up and model load)")
    bursts: list[tuple[float, int]] = []  # events closer than _BURST_GAP_S are one burst
    for stamp, done in progress:
        if bursts and stamp - bursts[-1][0] < _BURST_GAP_S:
            bursts[-1] = (stamp, done)
        else:
            bursts.append((stamp, done))
    if len(bursts) < 2 or workload.num_expressions <= bursts[0][1]:
        return None
    (first_t, first_done), (last_t, _) = bursts[0], bursts[-1]
    share = (workload.num_expressions - first_done) / workload.num_expressions
    return ResultRow(PIPELINE_STEADY, seconds=last_t - first_t, masks=int(round(workload.num_masks * share)),
                     frames=int(round(workload.num_frames * share)),
                     note=f"first to last batch of finished videos; work = {100 * share:.0f}% of the masks "
                          "(by expressions, approximate)")


def _pipeline_masks(output: str, keys: set[tuple[str, str]]) -> dict[tuple[str, str], np.ndarray]:
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipelines.io.writers import read_output

    table = read_output(output, "masks", columns=["video_id", "exp_id", "frame_index", "height", "width", "rle_counts"])
    wanted = sorted({v for v, _ in keys})
    table = table.filter(pc.is_in(table["video_id"], value_set=pa.array(wanted)))
    table = table.sort_by([("video_id", "ascending"), ("exp_id", "ascending"), ("frame_index", "ascending")])
    grouped: dict[tuple[str, str], list[dict]] = {}
    for row in table.to_pylist():
        key = (row["video_id"], row["exp_id"])
        if key in keys:
            grouped.setdefault(key, []).append(row)
    return {k: decode_rle([r["rle_counts"] for r in rows], (rows[0]["height"], rows[0]["width"]))
            for k, rows in grouped.items()}


def _agreement(reference: dict, candidate: dict[tuple[str, str], np.ndarray]) -> Agreement | None:
    missing = sorted(set(reference) - set(candidate))
    if missing:
        raise RuntimeError(f"no masks for {len(missing)} compared expression(s), e.g. {missing[:3]}")
    return mask_agreement((decode_rle(*reference[k]), candidate[k]) for k in sorted(reference))


# ---------------------------------------------------------------------------------------- the run


def _physical_gpu(index: int) -> int:
    """nvidia-smi's index of CUDA device ``index`` (CUDA_VISIBLE_DEVICES renumbers devices; UUIDs: unchanged)."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if index < len(visible) and visible[index].isdigit():
        return int(visible[index])
    return index


def _sam2_cuda_extension() -> bool:
    """Whether ``sam2._C`` is importable (without it, hole filling uses our exact tensor-op version on the GPU)."""
    import importlib.util

    return importlib.util.find_spec("sam2._C") is not None


def run_benchmark(cfg: BenchmarkConfig, *, say: Callable[[str], None] = print) -> list[ResultRow]:
    """Run every requested path on one workload; print and write the table; return the rows.

    Rows of earlier invocations on the same ``output_dir`` with the same workload, preset and device
    are merged in (see :mod:`benchmarks.result_store`), so the paths may run in separate commands.
    """
    import torch

    from benchmarks.presets import resolve_preset
    from benchmarks.result_store import load_previous_rows, load_serial_masks, run_key, save_serial_masks

    preset = resolve_preset(cfg.preset)
    if preset != cfg.preset:
        say(f"note: preset {cfg.preset!r} has no tokenizer files here; running {preset!r} (same sizes, tokenizer "
            "built in code; see vrshq.builders.vrshq_7b_tinytok_config)")
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {cfg.device} but torch sees no CUDA device")
    if device.type == "cuda" and not _sam2_cuda_extension():
        say("note: sam2._C (SAM2's CUDA extension) is missing: hole filling runs as tensor ops on the GPU "
            "(vrshq.model.sam2_model.fill_small_holes_on_device, exact, no host sync)")
    os.makedirs(cfg.output_dir, exist_ok=True)
    started = time.perf_counter()
    workload = write_workload(os.path.join(cfg.workdir, "workload"), cfg.workload, workers=cfg.workload_workers)
    say(f"workload: {len(workload.videos)} videos, {workload.num_frames} frames, {workload.num_expressions} "
        f"expressions, {workload.num_masks} masks ({cfg.workload.height}x{cfg.workload.width}) at {workload.root} "
        f"[{time.perf_counter() - started:.0f} s]")
    infer_cfg = _inference_config(cfg, workload, preset, os.path.join(cfg.workdir, "pipeline_out"))
    name = _device_name(device) + (" fp32" if cfg.precision == "fp32" else "")
    sha = git_sha(_REPO_ROOT)
    key = run_key(preset=preset, device_name=name, workload=dataclasses.asdict(cfg.workload))
    results_json = os.path.join(cfg.output_dir, "results.json")
    masks_uri = os.path.join(cfg.output_dir, "serial_masks.parquet")
    rows: dict[str, ResultRow] = {r.name: r for r in load_previous_rows(results_json, key)}
    if rows:
        say(f"merging rows of an earlier invocation: {sorted(rows)}")
    serial_masks = {} if "serial" in cfg.paths else load_serial_masks(masks_uri, key=key)
    model_masks: dict = {}
    decisions: dict = {}
    # the in-process paths use cfg.device (sampled first); the pipeline's actors GPUs 0..num_actors-1
    first = device.index or 0
    gpus = [first, *(i for i in range(cfg.num_actors if "pipeline" in cfg.paths else 0) if i != first)]
    sampler = GpuBusySampler(gpu_index=[_physical_gpu(i) for i in gpus], enabled=device.type == "cuda")
    with sampler:
        if {"serial", "model", "bound"} & set(cfg.paths) or cfg.profile != "none":
            local = LocalPaths(cfg, workload, infer_cfg)
            say(f"model {preset} built in {local.build_seconds:.1f} s on {name}")
            try:
                local.warm_up()
                if "bound" in cfg.paths:
                    rows[BOUND] = local.encoder_bound(sampler)
                    say(f"SAM2 encoder bound: {rows[BOUND].frames_per_s:.1f} frames/s")
                if "serial" in cfg.paths:
                    rows[SERIAL], serial_masks, stages = local.serial(sampler)
                    save_serial_masks(masks_uri, serial_masks, key=key)
                    say("serial stage seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
                if "model" in cfg.paths:
                    rows[MODEL_ONLY], model_masks = local.model_only(sampler, set(serial_masks))
                    say(f"model only: {rows[MODEL_ONLY].masks_per_s:.1f} masks/s")
                if cfg.profile != "none":
                    text = local.profile(cfg.profile, cfg.output_dir)
                    with open(os.path.join(cfg.output_dir, f"profile_{cfg.profile}.txt"), "w") as handle:
                        handle.write(text)
                    say(f"profile of one segment_video ({cfg.profile}):\n{text}")
            finally:
                decisions = local.decisions
                local.close()
                del local
        if "pipeline" in cfg.paths:
            rows.pop(PIPELINE_STEADY, None)
            rows[PIPELINE], steady, output = _run_pipeline(cfg, workload, infer_cfg, sampler)
            if steady is not None:
                rows[PIPELINE_STEADY] = steady
            if serial_masks:
                rows[PIPELINE].agreement = _agreement(serial_masks, _pipeline_masks(output, set(serial_masks)))
    breakdown = None
    if serial_masks and model_masks:
        decoded = {k: decode_rle(*v) for k, v in model_masks.items()}
        rows[MODEL_ONLY].agreement = _agreement(serial_masks, decoded)
        if decisions.get(SERIAL) and decisions.get(MODEL_ONLY):
            ious = {k: per_mask_iou(decode_rle(*serial_masks[k]), decoded[k]) for k in serial_masks if k in decoded}
            breakdown = decision_breakdown(decisions[SERIAL], decisions[MODEL_ONLY], ious)
            rows[MODEL_ONLY].extra["agreement_breakdown"] = breakdown
    for path in cfg.paths:  # rows measured now carry this invocation's code version
        for row_name in {"serial": [SERIAL], "model": [MODEL_ONLY], "bound": [BOUND],
                         "pipeline": [PIPELINE, PIPELINE_STEADY]}[path]:
            if row_name in rows:
                rows[row_name].extra["git_sha"] = sha
    ordered = [rows[k] for k in (SERIAL, PIPELINE, PIPELINE_STEADY, MODEL_ONLY, BOUND) if k in rows]
    config = {**dataclasses.asdict(cfg), "preset_run": preset, "workload_root": workload.root,
              "gpu_sampler": sampler.error or "nvidia-smi", "sam2_cuda_extension": _sam2_cuda_extension(),
              "torch": torch.__version__}
    say("")
    say(f"VRS-HQ inference throughput - {preset}, {name}, git {sha}")
    say(f"workload: {len(workload.videos)} videos x {cfg.workload.min_frames}-{cfg.workload.max_frames} frames "
        f"at {cfg.workload.height}x{cfg.workload.width}, {cfg.workload.min_expressions}-{cfg.workload.max_expressions} "
        f"expressions: {workload.num_frames} frames, {workload.num_expressions} expressions, {workload.num_masks} masks")
    say(format_table(ordered, serial_name=SERIAL))
    for line in roofline_lines(rows, name):
        say(line)
    if breakdown is not None:
        say("model only vs serial, by where the expressions part (same weights and inputs):")
        say(format_breakdown(breakdown))
    write_rows(os.path.join(cfg.output_dir, "results.parquet"), ordered, device_name=name, sha=sha, config=config)
    with open(results_json, "w", encoding="utf-8") as handle:
        json.dump({"run_key": key, "device": name, "git_sha": sha, "config": config,
                   "rows": [{**dataclasses.asdict(r), "masks_per_s": r.masks_per_s, "frames_per_s": r.frames_per_s}
                            for r in ordered]}, handle, indent=2, default=str)
    say(f"rows written to {os.path.join(cfg.output_dir, 'results.parquet')} (total {time.perf_counter() - started:.0f} s)")
    return ordered


# ------------------------------------------------------------------------------------------ the CLI


def _parser() -> argparse.ArgumentParser:
    d = BenchmarkConfig()
    w = WorkloadConfig()
    p = argparse.ArgumentParser(prog="python -m benchmarks.inference_throughput",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--preset", default=d.preset, help="model preset (random init): vrshq-7b or tiny")
    p.add_argument("--device", default=d.device, help="cpu, cuda or cuda:<i>")
    p.add_argument("--dry-run", action="store_true",
                   help="tiny preset on CPU, 2 short small videos, 20 s serial budget: exercises every code path")
    p.add_argument("--videos", type=int, default=w.num_videos)
    p.add_argument("--min-frames", type=int, default=w.min_frames)
    p.add_argument("--max-frames", type=int, default=w.max_frames)
    p.add_argument("--frames", type=int, default=None, help="shorthand: min-frames = max-frames = N")
    p.add_argument("--height", type=int, default=w.height)
    p.add_argument("--width", type=int, default=w.width)
    p.add_argument("--min-expressions", type=int, default=w.min_expressions)
    p.add_argument("--max-expressions", type=int, default=w.max_expressions)
    p.add_argument("--workload-seed", type=int, default=w.seed)
    p.add_argument("--workdir", default=d.workdir)
    p.add_argument("--output-dir", default=d.output_dir)
    p.add_argument("--budget-s", type=float, default=d.budget_s, help="serial path time budget before extrapolating")
    p.add_argument("--min-serial-expressions", type=int, default=d.min_serial_expressions)
    p.add_argument("--serial-decode-passes", type=int, default=d.serial_decode_passes,
                   help="frame decodes per serial expression (official: 3)")
    p.add_argument("--max-side", type=int, default=None, help="pipeline working resolution (default: SAM2 size)")
    p.add_argument("--encoder-batch", type=int, default=d.encoder_batch)
    p.add_argument("--encoder-iters", type=int, default=d.encoder_iters)
    p.add_argument("--num-actors", type=int, default=d.num_actors, help="model actors (one per GPU)")
    p.add_argument("--read-concurrency", type=int, default=d.read_concurrency)
    p.add_argument("--num-writers", type=int, default=d.num_writers)
    p.add_argument("--cpus-per-actor", type=float, default=d.cpus_per_actor)
    p.add_argument("--read-num-cpus", type=float, default=d.read_num_cpus)
    p.add_argument("--writer-num-cpus", type=float, default=d.writer_num_cpus)
    p.add_argument("--ray-address", default=d.ray_address, help="'local' (private cluster) or a cluster address")
    p.add_argument("--ray-num-cpus", type=int, default=None)
    p.add_argument("--workload-workers", type=int, default=d.workload_workers)
    p.add_argument("--paths", default=",".join(d.paths), help="comma list of serial,model,pipeline,bound")
    p.add_argument("--profile", default=d.profile, choices=("none", "torch", "cprofile"))
    p.add_argument("--sdpa", default=None,
                   help="attention kernels of the in-process paths: pytorch (PyTorch's choice) or a comma list of "
                        "flash,efficient,math,cudnn (default: the model's inference_sdpa_backends)")
    p.add_argument("--precision", default=d.precision, choices=("bf16", "fp32"),
                   help="in-process paths: bf16 as deployed, or fp32 weights and compute (agreement check)")
    p.add_argument("--score-on", default=d.score_on, choices=("actor", "writer"),
                   help="pipeline: score J, F, A, R on the model actor's device or on the writers' CPUs")
    p.add_argument("--seed", type=int, default=d.seed)
    return p


def _config_from_args(args: argparse.Namespace) -> BenchmarkConfig:
    if args.frames is not None:
        args.min_frames = args.max_frames = args.frames
    overrides: dict[str, Any] = {}
    if args.dry_run:
        args.preset, args.device = "tiny", "cpu"
        args.videos, args.min_frames, args.max_frames, args.height, args.width = 2, 8, 10, 96, 128
        args.min_expressions, args.max_expressions = 2, 3
        args.budget_s, args.encoder_iters = min(args.budget_s, 20.0), 2
        overrides = {"ray_num_cpus": args.ray_num_cpus or 2}
    cpu = args.device == "cpu"
    workload = WorkloadConfig(num_videos=args.videos, min_frames=args.min_frames, max_frames=args.max_frames,
                              height=args.height, width=args.width, min_expressions=args.min_expressions,
                              max_expressions=args.max_expressions, seed=args.workload_seed)
    return BenchmarkConfig(
        preset=args.preset, device=args.device, workload=workload, workdir=args.workdir, output_dir=args.output_dir,
        budget_s=args.budget_s, min_serial_expressions=args.min_serial_expressions,
        serial_decode_passes=args.serial_decode_passes, max_side=args.max_side, encoder_batch=args.encoder_batch,
        encoder_iters=args.encoder_iters, num_actors=args.num_actors, read_concurrency=args.read_concurrency,
        num_writers=args.num_writers,
        # a small CPU host cannot reserve whole cores for every stage at once (reads would starve)
        cpus_per_actor=1.0 if cpu and args.cpus_per_actor == BenchmarkConfig.cpus_per_actor else args.cpus_per_actor,
        read_num_cpus=0.25 if cpu and args.read_num_cpus == BenchmarkConfig.read_num_cpus else args.read_num_cpus,
        writer_num_cpus=0.25 if cpu and args.writer_num_cpus == BenchmarkConfig.writer_num_cpus else args.writer_num_cpus,
        ray_address=args.ray_address, ray_num_cpus=overrides.get("ray_num_cpus", args.ray_num_cpus),
        workload_workers=args.workload_workers, paths=tuple(p.strip() for p in args.paths.split(",") if p.strip()),
        profile=args.profile, sdpa=args.sdpa, precision=args.precision, score_on=args.score_on, seed=args.seed,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the benchmark; 0 on success, 2 on a bad command line."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = _parser().parse_args(argv)
    try:
        cfg = _config_from_args(args)
    except ValueError as exc:
        print(f"benchmarks.inference_throughput: {exc}", file=sys.stderr)
        return 2
    if cfg.device == "cpu":
        import torch

        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    run_benchmark(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
