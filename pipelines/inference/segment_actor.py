"""The model stage of the inference pipeline: a Ray Data callable class, one model per actor.

``SegmentActor.__init__`` builds (and loads) the model once; ``__call__`` takes one video per
batch (``batch_size=1``), runs ``VrshqModel.segment_video`` for all its pending expressions
together (the model shares the per-video work: SAM2 image features, CLIP features) under
``torch.inference_mode``. The model resizes its mask logits straight to the original frame size
(``output_hw``: the frames it sees are downscaled) and thresholds them on its device; the masks
are RLE-encoded there (:func:`pipelines.io.rle.encode_masks`), so only compact rows (a few bytes per
frame) leave the device and the actor. The masks are built and encoded chunk by chunk
(``SegmentationResult.iter_mask_chunks``), so a video's full-size masks never exist at once.

With ``compute.score_on = "actor"`` (the default) each chunk is also scored there, on the device,
against the ground truth of videos that have one (:mod:`pipelines.inference.device_scoring`): the
row carries per-frame J and F and the pixel counts of A and R per expression, and the writers only
reduce them. Each row also carries the video's time split (``stage_seconds_json``: the model's
stages, ``masks_rle`` and ``score``; CUDA-event times on a GPU) for the run's summary.

Output rows (:data:`RESULT_SCHEMA`, one per video) go to the CPU scoring/writing stage. Failures
never raise out of ``__call__``: they become error entries of the row, so one bad video cannot
fail the job or kill the actor (and Ray's actor restarts stay for real crashes).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.inference.config import InferenceConfig
from pipelines.inference.device_scoring import ActorGroundTruth
from pipelines.io.rle import encode_masks
from pipelines.inference.video_io import FrameReadError, item_from_json, read_video
from schemas import SEGMENT_RESULT_SCHEMA

__all__ = ["DEFAULT_MASK_CHUNK_FRAMES", "RESULT_SCHEMA", "SegmentActor", "encode_and_score", "segment_video_item"]

_LOG = logging.getLogger(__name__)

#: Test-only fault hook (off unless this environment variable is set): the path of a file holding
#: whitespace-separated call counts "n1 n2 ..."; the actor process exits abruptly (``os._exit``)
#: on its n1-th ``__call__`` counted from when the file was written, then on the n2-th call after
#: that, and so on. Lets tests/chaos kill a model actor mid-batch the way an OOM kill or a lost node
#: does, to prove Ray restarts it and no row is lost or duplicated.
CHAOS_KILL_FILE_ENV = "VRSHQ_CHAOS_KILL_FILE"


def _chaos_maybe_exit() -> None:
    path = os.environ.get(CHAOS_KILL_FILE_ENV)
    if not path:
        return
    try:
        with open(path) as handle:
            counts = [int(n) for n in handle.read().split()]
    except (OSError, ValueError):
        return
    if not counts:
        return
    counts[0] -= 1
    remaining = counts[1:] if counts[0] <= 0 else counts
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as handle:
        handle.write(" ".join(map(str, remaining)))
    os.replace(tmp, path)
    if counts[0] <= 0:
        _LOG.warning("%s: exiting on purpose (test fault injection)", CHAOS_KILL_FILE_ENV)
        os._exit(137)

#: Frames per chunk of full-size masks built and RLE-encoded at once. At S = 1024 and 720p a chunk of
#: 32 costs ~350 MB of temporaries on the device (float logits at S×S and at 720p, then bool masks).
DEFAULT_MASK_CHUNK_FRAMES = 32

#: One row per video: what the model stage hands to the writer stage (defined in ``schemas``).
RESULT_SCHEMA = SEGMENT_RESULT_SCHEMA

#: Stage of the actor's time split: full-size masks built from the logits and RLE-encoded.
MASKS_STAGE = "masks_rle"


def _error(exp_id: str | None, stage: str, exc: BaseException, uri: str | None = None) -> dict[str, Any]:
    return {
        "exp_id": exp_id,
        "stage": stage,
        "error_type": type(exc).__name__,
        "message": str(exc) or repr(exc),
        "uri": uri if uri is not None else getattr(exc, "uri", None),
    }


def segment_video_item(
    model: Any,
    item_json: str,
    frames: np.ndarray | None,
    *,
    original_hw: tuple[int, int],
    max_side: int,
    storage_options: dict[str, Any] | None = None,
    mask_chunk_frames: int = DEFAULT_MASK_CHUNK_FRAMES,
    ground_truth: ActorGroundTruth | None = None,
) -> dict[str, Any]:
    """Segment every pending expression of one work item; returns a :data:`RESULT_SCHEMA` row.

    Args:
        model: a ``VrshqModel`` (``segment_video(frames_uint8, expressions)``).
        item_json: the work item (:func:`pipelines.inference.video_io.item_to_json`).
        frames: uint8 ``(T, h, w, 3)`` at the working resolution, or None to read them here
            (videos too large for the object store).
        original_hw: the original frame size (the masks' output size).
        max_side: working resolution, used when the frames are read here.
        storage_options: fsspec options, used when the frames are read here.
        mask_chunk_frames: frames whose full-size masks are built and RLE-encoded at a time
            (``SegmentationResult.iter_mask_chunks``): memory for masks is O(chunk), not O(T).
        ground_truth: scores each chunk against the video's ground truth on the masks' device
            (``compute.score_on = "actor"``); None leaves scoring to the writers.
    """
    import torch

    from vrshq.model.stage_timer import StageTimer

    video = item_from_json(item_json)
    row: dict[str, Any] = {
        "dataset": video.dataset, "split": video.split, "video_id": video.video_id, "item_json": item_json,
        "height": int(original_hw[0]), "width": int(original_hw[1]), "results": [], "errors_json": "[]",
    }
    errors: list[dict[str, Any]] = []
    try:
        if frames is None:
            frames, original_hw = read_video(video, max_side=max_side, storage_options=storage_options)
            row["height"], row["width"] = int(original_hw[0]), int(original_hw[1])
        texts = [e.text for e in video.expressions]
        start = time.perf_counter()
        expected = (int(frames.shape[0]), row["height"], row["width"])
        video_gt = ground_truth.for_video(video) if ground_truth is not None else None
        timer = StageTimer(torch.device(getattr(model, "device", "cpu")))
        with _timed(model, timer), torch.inference_mode():
            # Logits are resized bilinearly to the original size and thresholded on the model's
            # device (method §5.3 step 6); the masks stay there and are RLE-encoded there too.
            results = model.segment_video(
                # torch wants a writable array: copy only when the frames are read-only or not uint8/C order
                torch.from_numpy(np.require(frames, dtype=np.uint8, requirements=["C_CONTIGUOUS", "WRITEABLE"])),
                texts,
                output_hw=expected[1:],
                masks_on_device=True,
            )
            if len(results) != len(texts):
                raise RuntimeError(f"segment_video returned {len(results)} results for {len(texts)} expressions")
            encoded = []
            for expression, result in zip(video.expressions, results):
                if result.mask_shape != expected:
                    errors.append(_error(expression.exp_id, "model", ValueError(
                        f"segment_video returned masks of shape {result.mask_shape}, expected {expected}")))
                    continue
                job = video_gt.job(expression, result.mask_shape) if video_gt is not None else None
                rle_counts = encode_and_score(result, mask_chunk_frames, job, timer)
                encoded.append((expression, result, rle_counts, job.result(timer) if job is not None else None))
        # the expressions' model time, without the time spent scoring them
        elapsed = time.perf_counter() - start - (video_gt.host_seconds if video_gt is not None else 0.0)
        per_expression = elapsed / max(len(texts), 1)
        for expression, result, rle_counts, frame_scores in encoded:
            row["results"].append({
                "exp_id": expression.exp_id,
                "rle_counts": rle_counts,
                "object_scores": np.asarray(result.object_scores, dtype=np.float32).reshape(-1).tolist(),
                "keyframe_index": int(result.keyframe_idx),
                "seconds": per_expression,
                "frame_scores": frame_scores,
            })
        row["stage_seconds_json"] = json.dumps(timer.seconds())
    except FrameReadError as exc:
        errors.append({"exp_id": None, **exc.to_dict()})
    except Exception as exc:  # noqa: BLE001 - one bad video becomes an error row, the job goes on
        _LOG.exception("model failed on video %s/%s/%s", video.dataset, video.split, video.video_id)
        errors.append(_error(None, "model", exc, uri=video.frames_uri or video.video_uri))
    row["errors_json"] = json.dumps(errors)
    return row


@contextlib.contextmanager
def _timed(model: Any, timer: Any) -> Iterator[None]:
    """The model times its stages with ``timer`` during the block (``VrshqModel.stage_timer``; others: nothing)."""
    if not hasattr(model, "stage_timer"):
        yield
        return
    model.stage_timer = timer
    try:
        yield
    finally:
        model.stage_timer = None


def encode_and_score(result: Any, chunk_frames: int, job: Any, timer: Any) -> list[bytes]:
    """RLE counts of every frame of ``result``, built chunk by chunk; each chunk scored by ``job`` (if any).

    Chunk by chunk, a long video's full-size masks never exist at once (on the device or the host).
    """
    chunks = result.iter_mask_chunks(chunk_frames)
    rle_counts: list[bytes] = []
    while True:
        with timer.stage(MASKS_STAGE):
            item = next(chunks, None)
            if item is None:
                break
            start, chunk = item
            rle_counts += encode_masks(chunk)
        if job is not None:
            job.add(start, chunk, timer)
        del chunk
    return rle_counts


class SegmentActor:
    """Ray Data UDF: ``map_batches(SegmentActor, fn_constructor_kwargs={"cfg": cfg, "max_side": n},
    compute=ActorPoolStrategy(size=k), num_gpus=1, batch_size=1)``.

    Args:
        cfg: the inference config (model preset/checkpoint/seed, device, storage options).
        max_side: the working resolution of the frames (for videos this actor reads itself).

    Raises:
        pipelines.inference.model_loader.ModelLoadError: from ``__init__`` when the model cannot be built;
            Ray Data then fails the job before any video is processed.
    """

    def __init__(self, cfg: InferenceConfig, *, max_side: int):
        import torch

        from pipelines.inference.model_loader import build_model, resolve_device

        self._cfg = cfg
        self._max_side = max_side
        self._device = resolve_device(cfg.device)
        if self._device.type == "cpu":
            torch.set_num_threads(max(1, int(cfg.compute.num_cpus_per_actor)))
        self._model = build_model(cfg, device=self._device)
        self._ground_truth = (ActorGroundTruth(cfg.storage_options)
                              if cfg.compute.score_on == "actor" else None)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        _chaos_maybe_exit()
        rows = []
        for i in range(len(batch["item_json"])):
            read_error = str(batch["read_error"][i])
            if read_error:
                fragment = json.loads(read_error)
                rows.append({
                    "dataset": str(batch["dataset"][i]), "split": str(batch["split"][i]),
                    "video_id": str(batch["video_id"][i]), "item_json": str(batch["item_json"][i]),
                    "height": 0, "width": 0, "results": [],
                    "errors_json": json.dumps([{"exp_id": None, **fragment}]),
                })
                continue
            inline = bool(batch["frames_inline"][i])
            rows.append(segment_video_item(
                self._model,
                str(batch["item_json"][i]),
                np.asarray(batch["frames"][i], dtype=np.uint8) if inline else None,
                original_hw=(int(batch["height"][i]), int(batch["width"][i])),
                max_side=self._max_side,
                storage_options=self._cfg.storage_options,
                ground_truth=self._ground_truth,
            ))
        return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)
