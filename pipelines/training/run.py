"""Distributed training with Ray Train: data streamed by Ray Data, DDP across workers, checkpoints
and fault tolerance in a local or ``s3://`` run folder.

Data: the training split's ``VideoRecord``s are read on the driver; the dataset is the range of
sample ids still to train on, and :func:`pipelines.training.clip_sampling.sample_clip_rows` turns each id
into a clip (frames decoded, masks unioned, prompts drawn) in Ray Data CPU tasks. Each worker
reads its share with ``ray.train.get_dataset_shard("train")`` (an equal streaming split, so every
rank runs the same number of steps).

Worker loop (:func:`train_loop_per_worker`): the seeded model build (identical on every rank), DDP
(gloo on CPU, NCCL on GPU; bf16 autocast on GPU inside the model), AdamW with per-group learning
rates, warm-up + linear decay, gradient accumulation and clipping (``pipelines.training.train_loop``). Every
``log_every`` steps all ranks ``ray.train.report`` the loss terms and throughput; every
``checkpoint_every`` steps (and at the end) rank 0 attaches a checkpoint folder
``step-<8 digits>/`` with the trainable weights (safetensors), optimiser + scheduler state,
``train_state.json`` (step, data position) and ``metrics.csv`` (every step so far). Validation
(every ``validation.every_steps``) scores J&F on a held-out split through ``segment_video`` and
writes ``validation/step-<8 digits>.json`` in the run folder and ``validation.json`` inside the
checkpoint of that step. At the end rank 0 exports the full model (``jobs.infer`` format).

Faults: ``FailureConfig(max_failures)`` restarts the worker group from the last reported
checkpoint (``ray.train.get_checkpoint()``, else the newest complete one in the run folder). The
sample stream is rebuilt at every worker-group start (:class:`ResumableTrainDataset`, a callable
``datasets`` value) from the run folder's newest checkpoint's data position: the streaming split
hands each rank whole blocks in completion order, so the ranks' sample ids are not interleaved and
filtering the *original* stream by the checkpoint position (the highest id any rank had consumed)
could leave a rank without data after a restart. A stopped run is continued by running the same
config again: the driver finds the run's latest checkpoint and the stream starts at its data position.
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipelines.io.storage import filesystem_for, join_uri, write_json
from pipelines.training.train_config import TrainConfig
from pipelines.training.train_guard import STAGE_CHECKPOINT, STAGE_DATA, STAGE_START, STAGE_STEP, report_stage

__all__ = [
    "CHECKPOINT_PREFIX",
    "METRICS_NAME",
    "StepHook",
    "ResumableTrainDataset",
    "TrainResult",
    "TrainingError",
    "TrainingStalledError",
    "build_train_dataset",
    "latest_checkpoint",
    "read_split",
    "run_training",
    "train_loop_per_worker",
]

_LOG = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step-"
METRICS_NAME = "metrics.csv"
_METRIC_KEYS = ("loss", "ce_loss", "bce_loss", "dice_loss", "object_loss", "grad_norm")


class TrainingError(RuntimeError):
    """Training could not start or did not finish (bad data, failed workers, ...)."""


class TrainingStalledError(TrainingError):
    """No worker made progress for ``stall_timeout_s`` seconds; the message names the stalled stage."""


@dataclass(frozen=True)
class TrainResult:
    """What :func:`run_training` did.

    Attributes:
        step: optimiser steps reached.
        checkpoint_uri: the last checkpoint folder (None if none was written).
        final_uri: the exported full model (None if training failed before the end).
        metrics: the last reported metrics.
        metrics_uri: the CSV of every step's metrics.
        resumed_from: the checkpoint a stopped run was continued from, if any.
    """

    step: int
    checkpoint_uri: str | None
    final_uri: str | None
    metrics: dict[str, Any]
    metrics_uri: str | None
    resumed_from: str | None


# ------------------------------------------------------------------------------------ driver


def read_split(fmt: str, root: str, split: str, storage_options: Mapping[str, Any] | None) -> list[Any]:
    """``VideoRecord``s of a split with the reader of ``fmt`` (revos | mevis)."""
    from vrshq.data import read_mevis, read_revos

    reader = read_revos if fmt == "revos" else read_mevis
    return reader(root, split=split, storage_options=dict(storage_options or {}) or None)


def latest_checkpoint(run_uri: str, storage_options: Mapping[str, Any] | None = None) -> str | None:
    """The complete checkpoint (``train_state.json`` present) with the highest step under ``run_uri``."""
    from pipelines.training.train_loop import TRAIN_STATE_NAME

    fs, root = filesystem_for(run_uri, storage_options)
    fs.invalidate_cache()  # s3fs caches listings per process: checkpoints appear while we train
    if not fs.isdir(root):
        return None
    names = sorted(
        p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)
        if p.rstrip("/").rsplit("/", 1)[-1].startswith(CHECKPOINT_PREFIX)
    )
    for name in reversed(names):
        if fs.isfile(f"{root.rstrip('/')}/{name}/{TRAIN_STATE_NAME}"):
            return join_uri(run_uri, name)
    return None


def _read_state(uri: str, storage_options: Mapping[str, Any] | None):
    from pipelines.training.train_loop import TRAIN_STATE_NAME, TrainState

    fs, root = filesystem_for(uri, storage_options)
    with fs.open(f"{root.rstrip('/')}/{TRAIN_STATE_NAME}", "r") as f:
        return TrainState(**json.load(f))


def _sample_rows(row: Mapping[str, Any], *, offset: int, **kwargs: Any) -> list[dict[str, Any]]:
    from pipelines.training.clip_sampling import sample_clip_rows

    return sample_clip_rows({"sample_id": int(row["id"]) + offset}, **kwargs)


def build_train_dataset(cfg: TrainConfig, records: Sequence[Any], *, start_sample: int, num_samples: int):
    """Ray Dataset of clip rows for sample ids ``[start_sample, start_sample + num_samples)``
    (clip sampling in CPU tasks; videos without a usable expression yield no row)."""
    import ray.data

    return ray.data.range(num_samples).flat_map(
        _sample_rows,
        fn_kwargs={
            "offset": int(start_sample),
            "records": list(records),
            "seed": cfg.data.shuffle_seed,
            "sampling": cfg.data.sampling,
            "storage_options": dict(cfg.storage_options) or None,
        },
        num_cpus=cfg.data.num_cpus_per_task,
    )


class ResumableTrainDataset:
    """The training dataset of a run, rebuilt from the run's data position at each worker-group start.

    Ray Train calls a callable ``datasets`` value whenever it (re)starts the worker group. A restart
    after a worker failure must stream the samples *after* the resumed checkpoint: reusing the first
    attempt's stream and skipping ids below the checkpoint's ``next_sample_id`` is not enough, because
    ``streaming_split`` gives each rank whole blocks in task-completion order (e.g. rank 0 ids 0-3,
    rank 1 ids 16-17), so that position can lie past most of a rank's unconsumed ids and the ranks
    would stop early for want of data.

    Args:
        cfg: the run's config.
        records: the usable training ``VideoRecord``s.
        start_sample: the data position when no checkpoint exists yet.
        num_samples: sample ids per stream; enough for the steps left at the driver's start, which
            no restart can resume before.
    """

    def __init__(self, cfg: TrainConfig, records: Sequence[Any], *, start_sample: int, num_samples: int) -> None:
        self.cfg = cfg
        self.records = list(records)
        self.start_sample = int(start_sample)
        self.num_samples = int(num_samples)

    def start_position(self) -> int:
        """``next_sample_id`` of the run folder's newest complete checkpoint (the start without one)."""
        last = latest_checkpoint(self.cfg.run_uri, self.cfg.storage_options)
        if last is None:
            return self.start_sample
        return max(self.start_sample, _read_state(last, self.cfg.storage_options).next_sample_id)

    def __call__(self):
        start = self.start_position()
        _LOG.info("training samples %d..%d of %s", start, start + self.num_samples - 1, self.cfg.run_uri)
        return build_train_dataset(self.cfg, self.records, start_sample=start, num_samples=self.num_samples)


def _ray_storage(cfg: TrainConfig) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for ``RunConfig``: a local path as is; a remote URI as its
    path inside a pyarrow wrapper of the fsspec filesystem (so endpoint/credential options apply)."""
    from fsspec.implementations.local import LocalFileSystem

    fs, path = filesystem_for(cfg.storage_path, cfg.storage_options)
    if isinstance(fs, LocalFileSystem):
        return os.path.abspath(path), None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return path.rstrip("/"), PyFileSystem(FSSpecHandler(fs))


StepHook = Callable[[int, int, int], None]
"""``hook(step, rank, world_size)``, called on every worker after each optimiser step (it travels to the workers
pickled, so it must be picklable): e.g. a test that kills a worker mid-run."""


def run_training(cfg: TrainConfig, *, log: Callable[[str], None] = _LOG.info,
                 on_step: StepHook | None = None) -> TrainResult:
    """Train with Ray Train as configured (``ray.init`` must have been called); ``on_step`` (optional) runs on
    every worker after each step.

    Raises:
        TrainingError: empty training split, or the run failed after ``max_failures`` restarts.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipelines.training.train_guard import ProgressBoard, StallWatchdog

    records = read_split(cfg.data.format, cfg.data.root, cfg.data.split, cfg.storage_options)
    usable = [r for r in records if r.num_frames >= cfg.data.sampling.min_video_frames
              and any(e.type_id in cfg.data.sampling.expression_types for e in r.expressions)]
    if not usable:
        raise TrainingError(
            f"no usable training video in {cfg.data.root} split {cfg.data.split!r} ({len(records)} videos; need >= "
            f"{cfg.data.sampling.min_video_frames} frames and an expression of type "
            f"{cfg.data.sampling.expression_types})"
        )
    resumed_from = latest_checkpoint(cfg.run_uri, cfg.storage_options)
    if resumed_from is not None and not cfg.resume:
        raise TrainingError(
            f"{cfg.run_uri} already holds checkpoints ({resumed_from}); set resume=true to continue that run "
            "or choose another name"
        )
    start_step, start_sample = 0, 0
    if resumed_from is not None:
        state = _read_state(resumed_from, cfg.storage_options)
        start_step, start_sample = state.step, state.next_sample_id
        log(f"continuing {cfg.run_uri} from {resumed_from} (step {start_step}, sample {start_sample})")
    remaining = cfg.max_steps - start_step
    if remaining > 0:
        per_step = cfg.num_workers * cfg.data.videos_per_batch * cfg.optim.grad_accum_steps
        # twice the need: skipped samples (videos without a usable expression) leave no row
        num_samples = 2 * remaining * per_step + per_step
        dataset = ResumableTrainDataset(cfg, usable, start_sample=start_sample, num_samples=num_samples)
        storage_path, storage_fs = _ray_storage(cfg)
        board = ray.remote(num_cpus=0)(ProgressBoard).remote() if cfg.stall_timeout_s else None
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"cfg": cfg, "dataset_start": start_sample, "progress": board, "on_step": on_step},
            scaling_config=ScalingConfig(
                num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker}
            ),
            run_config=RunConfig(
                name=cfg.name,
                storage_path=storage_path,
                storage_filesystem=storage_fs,
                failure_config=FailureConfig(max_failures=cfg.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.num_to_keep),
            ),
            datasets={"train": dataset},
            torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        )
        watchdog = StallWatchdog(board, cfg.stall_timeout_s) if board is not None else contextlib.nullcontext()
        try:
            with watchdog:
                result = trainer.fit()
        except (KeyboardInterrupt, SystemExit):  # the watchdog interrupts; Ray Train's SIGINT handler aborts the run
            if getattr(watchdog, "message", None) is None:
                raise
            raise TrainingStalledError(f"training run {cfg.run_uri}: {watchdog.message}") from None
        except Exception as exc:  # noqa: BLE001 - Ray wraps worker errors in several types
            if getattr(watchdog, "message", None) is not None:
                raise TrainingStalledError(f"training run {cfg.run_uri}: {watchdog.message}") from exc
            raise TrainingError(f"training run {cfg.run_uri} failed: {exc}") from exc
        if getattr(result, "error", None) is not None:
            raise TrainingError(f"training run {cfg.run_uri} failed: {result.error}")
        metrics = dict(result.metrics or {})
    else:
        log(f"{cfg.run_uri} already reached max_steps={cfg.max_steps}")
        metrics = {"step": start_step}
    last = latest_checkpoint(cfg.run_uri, cfg.storage_options)
    step = _read_state(last, cfg.storage_options).step if last else int(metrics.get("step", 0))
    fs, final_path = filesystem_for(cfg.final_uri, cfg.storage_options)
    fs.invalidate_cache()
    final = cfg.final_uri if fs.exists(final_path) else None
    metrics_uri = join_uri(cfg.run_uri, METRICS_NAME)
    if last is not None:  # the full step log, beside the checkpoints
        src_fs, src = filesystem_for(join_uri(last, METRICS_NAME), cfg.storage_options)
        if src_fs.isfile(src):
            with src_fs.open(src, "rb") as f_in, filesystem_for(metrics_uri, cfg.storage_options)[0].open(
                filesystem_for(metrics_uri, cfg.storage_options)[1], "wb"
            ) as f_out:
                f_out.write(f_in.read())
    return TrainResult(step=step, checkpoint_uri=last, final_uri=final, metrics=metrics,
                       metrics_uri=metrics_uri if last else None, resumed_from=resumed_from)


# ------------------------------------------------------------------------------ worker loop


def _rows(shard: Any, *, skip_before: int) -> Iterator[dict[str, Any]]:
    for row in shard.iter_rows():
        if int(row["sample_id"]) >= skip_before:
            yield row


def _take(rows: Iterator[dict[str, Any]], n: int) -> list[dict[str, Any]] | None:
    out = []
    for row in rows:
        out.append(row)
        if len(out) == n:
            return out
    return None


def _all_reduce_int(value: int, device: Any, *, op: str) -> int:
    """``value`` reduced over the ranks with ``op`` ("max" | "min"); itself with one rank."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.long, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.MIN)
    return int(tensor.item())


def _read_metrics_csv(folder: str) -> list[dict[str, Any]]:
    path = os.path.join(folder, METRICS_NAME)
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return [dict(r) for r in csv.DictReader(f)]


def _write_metrics_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
    if not rows:
        return
    names = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker function (``train_loop_config`` = ``{"cfg": TrainConfig, "dataset_start": int,
    "on_step": StepHook | None}``)."""
    import ray.train
    import torch
    from ray.train import Checkpoint

    from pipelines.training.clip_sampling import rows_to_batch
    from pipelines.training.train_loop import (
        TrainState,
        build_optimizer,
        build_scheduler,
        build_training_model,
        export_model,
        load_eval_videos,
        load_train_checkpoint,
        loss_only_forward,
        save_train_checkpoint,
        train_step,
        validate,
    )

    cfg: TrainConfig = config["cfg"]
    on_step: StepHook | None = config.get("on_step")
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    board = config.get("progress")  # pipelines.training.train_guard: the driver's stall watchdog reads it
    report_stage(board, rank, STAGE_START, -1)
    device = ray.train.torch.get_device() if cfg.use_gpu else torch.device("cpu")
    if not cfg.use_gpu:
        torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    model = build_training_model(cfg.model, device=device)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, warmup_steps=cfg.optim.warmup_steps, decay_steps=cfg.decay_steps)
    state = TrainState(next_sample_id=int(config["dataset_start"]))
    history: list[dict[str, Any]] = []
    checkpoint = ray.train.get_checkpoint()
    # Ray registers a reported checkpoint when its controller next polls the workers (every ~2 s):
    # a crash right after a report restarts without it, so the run folder (written synchronously by
    # rank 0 before its report returns) is the fallback; it also continues a stopped run.
    resume_uri = None if checkpoint is not None else latest_checkpoint(cfg.run_uri, cfg.storage_options)
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_train_checkpoint(folder, model=model, optimizer=optimizer, scheduler=scheduler)
            history = _read_metrics_csv(folder)
    elif resume_uri is not None:
        state = load_train_checkpoint(resume_uri, model=model, optimizer=optimizer, scheduler=scheduler,
                                      storage_options=cfg.storage_options)
        with tempfile.TemporaryDirectory() as tmp:
            fs, path = filesystem_for(join_uri(resume_uri, METRICS_NAME), cfg.storage_options)
            if fs.isfile(path):
                fs.get_file(path, os.path.join(tmp, METRICS_NAME))
                history = _read_metrics_csv(tmp)
    attempt_start = state.step
    _LOG.info("rank %d starts at step %d (%s)", rank, state.step, checkpoint or resume_uri or "new run")
    forward = model
    if world > 1:
        forward = torch.nn.parallel.DistributedDataParallel(
            loss_only_forward(model),
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    eval_videos = []
    if rank == 0 and cfg.validation.every_steps:
        val = cfg.validation
        records = read_split(val.format, val.root, val.split, cfg.storage_options)
        eval_videos = load_eval_videos(records, expression_types=val.expression_types,
                                       storage_options=cfg.storage_options, max_videos=val.max_videos)
    # the stream starts at the run folder's newest data position (ResumableTrainDataset); the skip
    # only guards against a stream older than this worker's checkpoint
    rows = _rows(ray.train.get_dataset_shard("train"), skip_before=state.next_sample_id)
    per_step = cfg.data.videos_per_batch * cfg.optim.grad_accum_steps
    step, max_sample, wall = state.step, state.next_sample_id - 1, state.wall_seconds
    while step < cfg.max_steps:
        t0 = time.perf_counter()
        report_stage(board, rank, STAGE_DATA, step)
        taken = _take(rows, per_step)
        report_stage(board, rank, STAGE_STEP, step)
        # every rank must agree to step (a rank that runs out would leave the others in a collective;
        # videos without a usable expression leave no row, and a rank resumed from an older checkpoint
        # than the stream's start skips nothing, so the ranks' row counts may differ)
        if not _all_reduce_int(int(taken is not None), device, op="min"):
            _LOG.warning("rank %d: the sample stream ended at step %d of %d", rank, step, cfg.max_steps)
            break
        t_data = time.perf_counter() - t0
        size = cfg.data.videos_per_batch
        micro = [rows_to_batch(taken[i : i + size]) for i in range(0, per_step, size)]
        stats = train_step(model, optimizer, scheduler, micro, clip_grad_norm=cfg.optim.clip_grad_norm,
                           forward_module=forward)
        step += 1
        max_sample = max(max_sample, *(int(r["sample_id"]) for r in taken))
        seconds = time.perf_counter() - t0
        wall += seconds
        row = {"step": step, **{k: stats[k] for k in _METRIC_KEYS},
               **{k: v for k, v in stats.items() if k.startswith("lr_")},
               "seconds": seconds, "data_seconds": t_data, "clips_per_s": world * per_step / seconds,
               "expressions_per_s": world * stats["num_expressions"] / seconds}
        history.append(row)
        if on_step is not None:
            on_step(step, rank, world)
        do_ckpt = step % cfg.checkpoint_every == 0 or step == cfg.max_steps
        do_val = bool(cfg.validation.every_steps) and (step % cfg.validation.every_steps == 0 or step == cfg.max_steps)
        if not (do_ckpt or do_val or step % cfg.log_every == 0):
            continue
        report = {**row, "attempt_start_step": attempt_start}
        report_stage(board, rank, STAGE_CHECKPOINT, step)
        scores = None
        if do_val and rank == 0:
            scores = validate(model, eval_videos)
            write_json(join_uri(cfg.run_uri, f"validation/{CHECKPOINT_PREFIX}{step:08d}.json"),
                        {"step": step, **scores}, cfg.storage_options)
            report.update({f"val_{k}": v for k, v in scores.items()})
            model.train()
        if not do_ckpt:
            ray.train.report(report)
            continue
        next_sample = _all_reduce_int(max_sample + 1, device, op="max")
        state = TrainState(step=step, next_sample_id=next_sample, wall_seconds=wall)
        if rank != 0:
            ray.train.report(report)
            continue
        with tempfile.TemporaryDirectory(prefix="vrshq-train-ckpt-") as tmp:
            folder = os.path.join(tmp, "ckpt")
            save_train_checkpoint(folder, model=model, optimizer=optimizer, scheduler=scheduler, state=state)
            _write_metrics_csv(os.path.join(folder, METRICS_NAME), history)
            if scores is not None:
                write_json(os.path.join(folder, "validation.json"), {"step": step, **scores})
            ray.train.report(report, checkpoint=Checkpoint.from_directory(folder),
                             checkpoint_dir_name=f"{CHECKPOINT_PREFIX}{step:08d}")
    if rank == 0 and step >= cfg.max_steps:
        export_model(model, cfg.final_uri, storage_options=cfg.storage_options)
