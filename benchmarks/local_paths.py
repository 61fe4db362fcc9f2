"""The in-process paths of the inference benchmark: serial, model only, SAM2 encoder bound, profile.

They share one model, built by :func:`pipelines.inference.model_loader.build_model` from the same
``InferenceConfig`` as the pipeline's actors (so the weights are the same), and read the workload's
frames exactly as the pipeline does (:func:`pipelines.inference.video_io.read_video` at the working
resolution, mask logits resized back to the original size: ``output_hw``), so all paths see
the same inputs and their masks can be compared.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.gpu_busy import GpuBusySampler
from benchmarks.throughput_report import ResultRow
from benchmarks.workload import Workload

if TYPE_CHECKING:
    from benchmarks.inference_throughput import BenchmarkConfig

__all__ = [
    "BOUND", "LocalPaths", "MODEL_ONLY", "PIPELINE", "PIPELINE_STEADY", "SERIAL", "busy_mean", "decode_rle", "phase",
    "sync",
]

_LOG = logging.getLogger("benchmarks.inference_throughput")
SERIAL, PIPELINE, PIPELINE_STEADY, MODEL_ONLY, BOUND = (
    "serial", "ours (pipeline)", "ours (pipeline, steady)", "ours (model only)", "SAM2 encoder bound")


def sync(device: Any) -> None:
    """Wait for queued CUDA work (timing boundaries); no-op on CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class _Phase:
    """Start/end (monotonic) of a measured phase, for the GPU busy window."""

    start: float = 0.0
    end: float = 0.0


@contextlib.contextmanager
def phase(device: Any) -> Any:
    """Time a block with the device synchronised at both ends (yields its start/end)."""
    span = _Phase()
    sync(device)
    span.start = time.monotonic()
    try:
        yield span
    finally:
        sync(device)
        span.end = time.monotonic()


def busy_mean(sampler: GpuBusySampler, start: float, end: float, *, all_gpus: bool = False) -> float | None:
    """Mean utilisation in [start, end] of the first sampled GPU (or of all), None when unknown."""
    return sampler.mean_busy(start, end, gpus=None if all_gpus else sampler.gpu_indices[:1]).mean_percent


def _rle_masks(masks: Any) -> list[bytes]:
    from pipelines.io.rle import encode_masks

    return encode_masks(masks)


def _spans_busy(sampler: GpuBusySampler, spans: Sequence[tuple[float, float]]) -> float | None:
    """Mean GPU utilisation over several time spans (weighted by their sample counts)."""
    parts = [s for s in (sampler.mean_busy(a, b, gpus=sampler.gpu_indices[:1]) for a, b in spans)
             if s.mean_percent is not None]
    if not parts:
        return None
    return sum(s.mean_percent * s.samples for s in parts) / sum(s.samples for s in parts)


def _decision(result: Any) -> dict[str, Any]:
    """The discrete choices of one expression's result: MLLM frames, keyframe and its TKS scores."""
    return {"frames": [int(f) for f in result.frame_indices], "keyframe": int(result.keyframe_idx),
            "scores": [float(v) for v in np.asarray(result.keyframe_scores, dtype=np.float64)],
            "object_scores": [float(v) for v in np.asarray(result.object_scores, dtype=np.float64).reshape(-1)]}


def decode_rle(counts: Sequence[bytes], shape: tuple[int, int]) -> np.ndarray:
    """bool (T, H, W) masks of RLE counts (the form the serial masks are kept in)."""
    from pipelines.io.rle import decode_masks

    return decode_masks(counts, height=shape[0], width=shape[1])


# --------------------------------------------------------------------------------- in-process paths


class LocalPaths:
    """The model in this process, with the workload's frames read exactly as the pipeline reads them."""

    def __init__(self, cfg: BenchmarkConfig, workload: Workload, infer_cfg: Any) -> None:
        import torch

        from pipelines.inference.model_loader import build_model
        from pipelines.inference.video_io import working_max_side

        self.cfg = cfg
        self.workload = workload
        self.device = torch.device(cfg.device)
        start = time.perf_counter()
        fp32 = cfg.precision == "fp32"
        self.model = build_model(infer_cfg, device=self.device, dtype=torch.float32 if fp32 else None)
        if fp32:  # float32 weights and compute (CUDA autocast is off for float32), no TF32
            import dataclasses as _dc

            self.model.cfg = _dc.replace(self.model.cfg, autocast_dtype="float32")
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        self.build_seconds = time.perf_counter() - start
        if cfg.sdpa is not None:  # instance override of VrshqModel.inference_sdpa_backends
            self.model.inference_sdpa_backends = None if cfg.sdpa == "pytorch" else tuple(
                name.strip() for name in cfg.sdpa.split(",") if name.strip())
            self.model.inference_attention()  # a bad name fails here, before any timing
        self.max_side = working_max_side(cfg.max_side, self.model.sam2.image_size)
        # per (video_id, exp_id): the discrete choices of each path (see throughput_report.decisions)
        self.decisions: dict[str, dict[tuple[str, str], dict[str, Any]]] = {SERIAL: {}, MODEL_ONLY: {}}
        self.ground_truth: Any = None  # the actor's ground-truth reader, made on first use

    def frames(self, video: Any) -> tuple[np.ndarray, tuple[int, int]]:
        from pipelines.inference.video_io import read_video

        return read_video(video, max_side=self.max_side)

    def warm_up(self) -> None:
        """One short call so that kernel selection and allocator growth are not timed."""
        import torch

        video = self.workload.videos[0]
        frames, _ = self.frames(video)
        with torch.inference_mode():
            self.model.segment_video(torch.from_numpy(frames[: min(8, len(frames))].copy()),
                                     [video.expressions[0].text])
        sync(self.device)

    def model_only(self, sampler: GpuBusySampler, keep: set[tuple[str, str]]) -> tuple[ResultRow, dict]:
        """``segment_video`` over every video (decode not timed); keeps RLE masks of the ``keep`` pairs.

        Around the timed calls it also does, per video, what the pipeline does around them, each
        timed as its own stage (in ``extra["stage_seconds"]``, with the model's own stages from
        :class:`vrshq.model.stage_timer.StageTimer`): ``decode`` (JPEG decode and resize),
        ``masks_rle`` (logits to full-size masks, RLE on the device), ``score`` (the workload's ground
        truth decoded on the device and J, F and the A/R counts of every mask, chunk by chunk, as the
        pipeline's actor does: :func:`pipelines.inference.segment_actor.encode_and_score`) and
        ``writers`` (the masks rows as Parquet). ``extra["stage_flops"]`` holds the FLOPs of
        the model's stages (:mod:`benchmarks.flops`).
        """
        import torch

        from benchmarks.flops import StageFlops, segment_video_flops
        from vrshq.model.stage_timer import StageTimer

        kept: dict[tuple[str, str], tuple[list[bytes], tuple[int, int]]] = {}
        seconds, spans = 0.0, []
        timer = StageTimer(self.device)
        flops = StageFlops()
        projected = not self.model.sam2.cfg.offload_memory_to_cpu
        for video in self.workload.videos:
            began = time.perf_counter()
            frames, hw = self.frames(video)
            timer.add("decode", time.perf_counter() - began)
            tensor = torch.from_numpy(frames.copy())
            self.model.stage_timer = timer
            try:
                with phase(self.device) as span, torch.inference_mode():
                    results = self.model.segment_video(tensor, [e.text for e in video.expressions], output_hw=hw,
                                                       masks_on_device=True)
            finally:
                self.model.stage_timer = None
            seconds += span.end - span.start
            spans.append((span.start, span.end))
            encoded = self._masks_rle_score(video, results, timer)
            began = time.perf_counter()
            self._write_rows(video, encoded, hw)
            timer.add("writers", time.perf_counter() - began)
            flops.add(segment_video_flops(
                self.model, num_frames=video.num_frames, texts=[e.text for e in video.expressions],
                frame_sets=[r.frame_indices for r in results], keyframes=[r.keyframe_idx for r in results],
                projected=projected))
            kept.update({(video.video_id, e.exp_id): (counts, hw) for e, counts in zip(video.expressions, encoded)
                         if (video.video_id, e.exp_id) in keep})
            self.decisions[MODEL_ONLY].update({(video.video_id, e.exp_id): _decision(r)
                                               for e, r in zip(video.expressions, results)
                                               if (video.video_id, e.exp_id) in keep})
            del results
            _LOG.info("model only: %s (%d frames, %d expressions) %.2f s", video.video_id, video.num_frames,
                      len(video.expressions), span.end - span.start)
        mean_busy = _spans_busy(sampler, spans)
        stage_seconds = timer.seconds()
        row = ResultRow(MODEL_ONLY, seconds=seconds, masks=self.workload.num_masks, frames=self.workload.num_frames,
                        gpu_busy_percent=mean_busy, note="segment_video only; frames pre-decoded",
                        extra={"stage_seconds": stage_seconds, "stage_flops": dict(flops.flops),
                               "workload_flops": flops.total})
        return row, kept

    def _masks_rle_score(self, video: Any, results: Sequence[Any], timer: Any) -> list[list[bytes]]:
        """Full-size masks RLE-encoded and scored chunk by chunk exactly as the actor does (stages
        ``masks_rle`` and ``score`` of ``timer``; CUDA-event times on a GPU)."""
        import torch

        from pipelines.inference.device_scoring import ActorGroundTruth
        from pipelines.inference.segment_actor import DEFAULT_MASK_CHUNK_FRAMES, encode_and_score

        if self.ground_truth is None:
            self.ground_truth = ActorGroundTruth()
        video_gt = self.ground_truth.for_video(video)
        encoded = []
        with torch.inference_mode():
            for expression, result in zip(video.expressions, results):
                job = video_gt.job(expression, result.mask_shape) if video_gt is not None else None
                encoded.append(encode_and_score(result, DEFAULT_MASK_CHUNK_FRAMES, job, timer))
                if job is not None and job.result(timer) is None:
                    raise RuntimeError(f"video {video.video_id} expression {expression.exp_id} was not scored")
        return encoded

    def _write_rows(self, video: Any, encoded: Sequence[list[bytes]], hw: tuple[int, int]) -> None:
        """The video's masks rows as one Parquet file (what the writers do per video)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [{"video_id": video.video_id, "exp_id": e.exp_id, "frame_index": i, "height": hw[0], "width": hw[1],
                 "rle_counts": c} for e, counts in zip(video.expressions, encoded) for i, c in enumerate(counts)]
        folder = os.path.join(self.cfg.workdir, "model_only_masks")
        os.makedirs(folder, exist_ok=True)
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in video.video_id)  # ids are data, not paths
        pq.write_table(pa.Table.from_pylist(rows), os.path.join(folder, f"{name}.parquet"))

    def serial_order(self) -> list[tuple[Any, Any]]:
        """(video, expression) pairs round-robin over videos, so a partial run covers every video length."""
        order, depth = [], max(len(v.expressions) for v in self.workload.videos)
        for k in range(depth):
            order += [(v, v.expressions[k]) for v in self.workload.videos if k < len(v.expressions)]
        return order

    def serial(self, sampler: GpuBusySampler) -> tuple[ResultRow, dict, dict]:
        """The official loop for as many expressions as ``budget_s`` allows, extrapolated to the workload."""
        from benchmarks.serial_reference import StageTimes, segment_expression_serial

        times = StageTimes()
        kept: dict[tuple[str, str], tuple[list[bytes], tuple[int, int]]] = {}
        seconds, masks, frames_decoded, spans, done = 0.0, 0, 0, [], 0
        order = self.serial_order()
        for video, expression in order:
            if done >= self.cfg.min_serial_expressions and seconds >= self.cfg.budget_s:
                break
            shape: dict[str, tuple[int, int]] = {}

            def load(video: Any = video, shape: dict = shape) -> np.ndarray:
                frames, shape["hw"] = self.frames(video)
                return frames

            with phase(self.device) as span:
                result = segment_expression_serial(self.model, load, expression.text,
                                                   decode_passes=self.cfg.serial_decode_passes,
                                                   output_hw=(video.height, video.width), times=times)
                full = result.masks
            seconds += span.end - span.start
            spans.append((span.start, span.end))
            masks += video.num_frames
            frames_decoded += video.num_frames * self.cfg.serial_decode_passes
            done += 1
            kept[(video.video_id, expression.exp_id)] = (_rle_masks(full), shape["hw"])
            self.decisions[SERIAL][(video.video_id, expression.exp_id)] = _decision(result)
            _LOG.info("serial: %s exp %s (%d frames) %.2f s; %d/%d expressions, %.0f/%.0f s budget", video.video_id,
                      expression.exp_id, video.num_frames, span.end - span.start, done, len(order), seconds,
                      self.cfg.budget_s)
        total_masks = self.workload.num_masks
        extrapolated = done < len(order)
        total_seconds = seconds * total_masks / masks if extrapolated else seconds
        mean_busy = _spans_busy(sampler, spans)
        stage_share = {k: round(v / max(times.total, 1e-9), 4) for k, v in times.seconds.items()}
        row = ResultRow(SERIAL, seconds=total_seconds, masks=total_masks, frames=self.workload.num_frames,
                        gpu_busy_percent=mean_busy, extrapolated=extrapolated, measured_expressions=done,
                        measured_masks=masks, note=f"{self.cfg.serial_decode_passes} decode(s)/expression",
                        extra={"stage_seconds": times.seconds, "stage_share": stage_share,
                               "measured_seconds": seconds, "frames_decoded": frames_decoded})
        return row, kept, times.seconds

    def _time_encoder(self, encoder: Any, images: Any, autocast: Any) -> tuple[float, float, float]:
        """(seconds, start, end) of ``encoder_iters`` forward passes after 3 warm-up passes."""
        import torch

        with torch.inference_mode(), autocast:
            for _ in range(3):
                encoder(images)
            with phase(self.device) as span:
                for _ in range(self.cfg.encoder_iters):
                    encoder(images)
        return span.end - span.start, span.start, span.end

    def encoder_bound(self, sampler: GpuBusySampler) -> ResultRow:
        """SAM2 image encoder (trunk + neck) alone on random inputs at batch ``encoder_batch``.

        On CUDA the bound is a bf16 copy of the encoder with bf16 inputs (no per-op weight casts:
        the fastest way to run it); the model's own setting (fp32 weights under bf16 autocast) is
        timed too and given in the note. On CPU: float32, as the model runs.
        """
        import copy

        import torch

        size = self.model.sam2.image_size
        batch = self.cfg.encoder_batch
        encoder = self.model.sam2.image_encoder
        images = torch.randn(batch, 3, size, size, device=self.device)
        note = ""
        if self.device.type == "cuda":
            autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16)
            seconds, start, end = self._time_encoder(encoder, images, autocast)
            as_run = batch * self.cfg.encoder_iters / seconds
            note = "fp32 weights + bf16 autocast (bf16 copy failed); "
            try:
                bf16 = copy.deepcopy(encoder).to(torch.bfloat16)
                seconds, start, end = self._time_encoder(bf16, images.to(torch.bfloat16), contextlib.nullcontext())
                note = f"bf16 weights (as the model runs it, fp32 + bf16 autocast: {as_run:.1f} frames/s); "
            except (RuntimeError, TypeError) as exc:  # keep the autocast number rather than lose the row
                _LOG.warning("SAM2 encoder bound: the bf16 copy failed (%s); reporting the autocast run", exc)
            finally:
                bf16 = None
                torch.cuda.empty_cache()
        else:
            seconds, start, end = self._time_encoder(encoder, images, contextlib.nullcontext())
        frames = batch * self.cfg.encoder_iters
        from benchmarks.flops import sam2_image_flops

        image_flops = frames * sam2_image_flops(self.model.sam2.sam2)
        per_frame = self.workload.num_masks / self.workload.num_frames
        # masks/s bound = frames/s x masks per frame: scale "masks" so that masks/s reads that way
        return ResultRow(BOUND, seconds=seconds, masks=int(round(frames * per_frame)), frames=frames,
                         gpu_busy_percent=busy_mean(sampler, start, end),
                         note=note + f"image encoder only, batch {batch}, {size}px; masks/s = frames/s x "
                                     f"{per_frame:.1f} masks/frame", extra={"workload_flops": image_flops})

    def profile(self, kind: str, output_dir: str) -> str:
        """Profile one ``segment_video`` of the first video; returns the printed summary."""
        import torch

        video = self.workload.videos[0]
        frames, _ = self.frames(video)
        tensor = torch.from_numpy(frames.copy())
        texts = [e.text for e in video.expressions]
        if kind == "cprofile":
            import cProfile
            import io
            import pstats

            profiler = cProfile.Profile()
            with torch.inference_mode():
                profiler.runcall(self.model.segment_video, tensor, texts)
            profiler.dump_stats(os.path.join(output_dir, "segment_video.prof"))
            stream = io.StringIO()
            pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(30)
            stats = pstats.Stats(profiler, stream=stream)
            stats.sort_stats("tottime").print_stats(25)
            return stream.getvalue()
        from torch.profiler import ProfilerActivity, profile, record_function

        from pipelines.io.rle import encode_masks

        _, hw = self.frames(video)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        with profile(activities=activities, record_shapes=False) as prof, torch.inference_mode():
            with record_function("vrshq.segment_video"):
                results = self.model.segment_video(tensor, texts, output_hw=hw, masks_on_device=True)
            with record_function("vrshq.masks_rle"):  # as the pipeline's actor does
                for result in results:
                    for _, chunk in result.iter_mask_chunks(32):
                        encode_masks(chunk)
            sync(self.device)
        prof.export_chrome_trace(os.path.join(output_dir, "segment_video_trace.json"))
        averages = prof.key_averages()
        key = "self_device_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        stages = [e for e in averages if e.key.startswith("vrshq.")]
        lines = [f"stages of one video ({video.num_frames} frames, {len(texts)} expressions): "
                 "name, CPU total ms, device total ms, calls"]
        lines += [f"  {e.key:<24} {e.cpu_time_total / 1e3:10.1f} {getattr(e, 'device_time_total', 0.0) / 1e3:10.1f} "
                  f"{e.count:6d}" for e in sorted(stages, key=lambda e: e.key)]
        steps = [e for e in averages if e.key in ("aten::scaled_dot_product_attention", "cudaLaunchKernel",
                                                  "cudaStreamSynchronize", "cudaMemcpyAsync")]
        lines += [f"  {e.key:<36} calls {e.count:8d}  CPU total {e.cpu_time_total / 1e3:9.1f} ms" for e in steps]
        return "\n".join(lines) + "\n" + averages.table(sort_by=key, row_limit=40)

    def close(self) -> None:
        import torch

        del self.model
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
