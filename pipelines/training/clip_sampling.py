"""Training clip sampling (method §1.4, §6): which frames and expressions one training sample holds.

One sample = one video, T frames (T drawn from ``[min_frames, max_frames]``, "8,12"), one random
frame in each of T equal bins of the video (policy ``uniform``: ``linspace(0, L, T+1)`` as ints,
all frames when L <= T), up to 3 of its expressions (``num_classes_per_sample``), each with its
ground truth = the union of its objects at those frames, and a training prompt per expression
(random question/answer template, `vrshq.model.prompts.training_prompt`). The same T frames go to
CLIP and SAM2.

Sampling is deterministic in ``(seed, sample_id)``: sample ``s`` uses video
``permutation_e[s mod N]`` of epoch ``e = s // N`` and the generator ``default_rng([seed, s])``, so
a resumed run that restarts at its saved sample position draws exactly the samples the stopped
run would have drawn.

In the Ray pipeline :func:`sample_clip_rows` runs in Ray Data CPU tasks (``Dataset.flat_map``), so
decoding and mask unions never run in the training loop; :func:`rows_to_batch` turns the rows a
worker receives into the model's ``TrainBatch``. The plain loop of ``research.learnability`` uses
:func:`sample_synthetic_clip` on in-memory synthetic videos with the same rules.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.training.train_config import SamplingConfig

__all__ = [
    "ClipSample",
    "choose_expressions",
    "draw_clip_length",
    "focused_video",
    "rows_to_batch",
    "sample_clip_from_record",
    "sample_clip_rows",
    "sample_rng",
    "sample_synthetic_clip",
    "samples_to_batch",
    "uniform_frame_indices",
    "video_index_for_sample",
]


@dataclass(frozen=True)
class ClipSample:
    """One training sample.

    Attributes:
        frames: uint8 (T, H, W, 3); T = 1 for an image sample (``SamplingConfig.image_ratio``).
        masks: bool (E, T, H, W), the union of each expression's objects at the sampled frames.
        expressions: the E expression texts (stripped, as training does, method §1.3).
        prompt_texts, prompt_instructions: the E training prompts (`VideoPrompt.text`/`.instruction`).
        frame_indices: the T sampled positions in the video.
        video_id: the source video.
        sample_id: the global sample number (data position).
    """

    frames: np.ndarray
    masks: np.ndarray
    expressions: tuple[str, ...]
    prompt_texts: tuple[str, ...]
    prompt_instructions: tuple[str, ...]
    frame_indices: tuple[int, ...]
    video_id: str
    sample_id: int


def sample_rng(seed: int, sample_id: int) -> np.random.Generator:
    """The generator of one sample: independent of the worker, the task and the other samples."""
    return np.random.default_rng([int(seed), int(sample_id)])


def video_index_for_sample(sample_id: int, num_videos: int, *, seed: int) -> int:
    """Video of sample ``sample_id``: epoch ``sample_id // num_videos`` visits every video once in a
    seeded random order.

    >>> sorted(video_index_for_sample(s, 4, seed=0) for s in range(4))
    [0, 1, 2, 3]
    """
    if num_videos < 1:
        raise ValueError(f"num_videos must be >= 1, got {num_videos}")
    epoch, offset = divmod(int(sample_id), num_videos)
    return int(np.random.default_rng([int(seed), epoch, 0x5EED]).permutation(num_videos)[offset])


def draw_clip_length(rng: np.random.Generator, sampling: SamplingConfig) -> int:
    """T in ``[min_frames, max_frames]`` (method §1.4 ``rvos_num_frames_sample_range``)."""
    return int(rng.integers(sampling.min_frames, sampling.max_frames + 1))


def uniform_frame_indices(num_video_frames: int, num_frames: int, rng: np.random.Generator) -> list[int]:
    """One random index in each of ``num_frames`` equal bins of ``[0, num_video_frames)`` (policy
    ``uniform``, method §1.4); every frame when the video has no more than ``num_frames``.

    >>> uniform_frame_indices(5, 8, np.random.default_rng(0))
    [0, 1, 2, 3, 4]
    >>> idx = uniform_frame_indices(100, 10, np.random.default_rng(0))
    >>> [i // 10 for i in idx]
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    """
    if num_video_frames < 1 or num_frames < 1:
        raise ValueError(f"need num_video_frames >= 1 and num_frames >= 1, got {num_video_frames}, {num_frames}")
    if num_video_frames <= num_frames:
        return list(range(num_video_frames))
    edges = np.linspace(0, num_video_frames, num_frames + 1).astype(int)
    return [int(rng.integers(lo, hi)) for lo, hi in zip(edges[:-1], edges[1:])]


def choose_expressions(
    type_ids: Sequence[int], sampling: SamplingConfig, rng: np.random.Generator
) -> list[int]:
    """Positions of up to ``max_expressions`` expressions among those of an allowed type, without
    replacement, in random order (empty when none is allowed)."""
    allowed = [i for i, t in enumerate(type_ids) if t in sampling.expression_types]
    if not allowed:
        return []
    count = min(sampling.max_expressions, len(allowed))
    return [allowed[int(i)] for i in rng.choice(len(allowed), size=count, replace=False)]


def _prompts(
    expressions: Sequence[str], num_frames: int, rng: np.random.Generator, *, image: bool
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    from vrshq.model.prompts import training_image_prompt, training_prompt

    py_rng = random.Random(int(rng.integers(2**62)))
    if image:
        prompts = [training_image_prompt(text, rng=py_rng) for text in expressions]
    else:
        prompts = [training_prompt(text, num_frames, rng=py_rng) for text in expressions]
    return tuple(p.text for p in prompts), tuple(p.instruction for p in prompts)


@dataclass(frozen=True)
class _SamplePlan:
    """What one sample holds: expression positions, sampled frame positions, image or clip."""

    chosen: list[int]
    indices: list[int]
    image: bool


def _plan_sample(
    num_video_frames: int, type_ids: Sequence[int], sampling: SamplingConfig, rng: np.random.Generator
) -> _SamplePlan | None:
    """The draws of one sample (shared by records and synthetic videos, so both follow one rule).

    With probability ``image_ratio`` an image sample: one random frame and up to ``max_expressions``
    of the ``image_expression_types`` expressions (a video without such an expression gives a clip
    instead). Otherwise a clip (method §1.4). None when the video cannot give a sample. No draw is
    spent on the image decision when ``image_ratio`` is 0, so such runs sample as before.
    """
    if sampling.image_ratio > 0 and num_video_frames >= 1 and rng.random() < sampling.image_ratio:
        image_sampling = dataclasses.replace(sampling, expression_types=sampling.image_expression_types)
        chosen = choose_expressions(type_ids, image_sampling, rng)
        if chosen:
            return _SamplePlan(chosen=chosen, indices=[int(rng.integers(num_video_frames))], image=True)
    if num_video_frames < sampling.min_video_frames:
        return None
    chosen = choose_expressions(type_ids, sampling, rng)
    if not chosen:
        return None
    indices = uniform_frame_indices(num_video_frames, draw_clip_length(rng, sampling), rng)
    return _SamplePlan(chosen=chosen, indices=indices, image=False)


@functools.lru_cache(maxsize=4)
def _cached_mask_dict(uri: str, options_json: str) -> dict[str, Any]:
    """A task process reads each mask_dict.json once (Ray reuses task workers)."""
    from vrshq.data import load_mask_dict

    return load_mask_dict(uri, storage_options=json.loads(options_json) or None)


def sample_clip_from_record(
    record,
    *,
    sample_id: int,
    seed: int,
    sampling: SamplingConfig,
    storage_options: Mapping[str, Any] | None = None,
    mask_dict: Mapping[str, Any] | None = None,
) -> ClipSample | None:
    """Sample one clip of a ``vrshq.data.VideoRecord`` (decodes only the sampled frames).

    Returns None when the video is shorter than ``sampling.min_video_frames`` or has no expression
    of an allowed type (the sample is skipped).

    Raises:
        DataError: unreadable frames or masks (naming the file).
    """
    from vrshq.data import load_expression_masks, load_frames

    rng = sample_rng(seed, sample_id)
    plan = _plan_sample(record.num_frames, [e.type_id for e in record.expressions], sampling, rng)
    if plan is None:
        return None
    chosen, indices = plan.chosen, plan.indices
    frames = load_frames(record, frame_indices=indices, storage_options=storage_options)
    if mask_dict is None and record.mask_dict_uri is not None:
        mask_dict = _cached_mask_dict(record.mask_dict_uri, json.dumps(dict(storage_options or {}), sort_keys=True))
    exprs = [record.expressions[i] for i in chosen]
    masks = np.stack(
        [
            load_expression_masks(
                record,
                e,
                storage_options=storage_options,
                mask_dict=mask_dict,
                frame_indices=indices,
                frame_size=frames.shape[1:3],
            )
            for e in exprs
        ]
    )
    texts = tuple(e.text.strip() for e in exprs)
    prompt_texts, instructions = _prompts(texts, len(indices), rng, image=plan.image)
    return ClipSample(
        frames=np.ascontiguousarray(frames, dtype=np.uint8),
        masks=masks.astype(bool),
        expressions=texts,
        prompt_texts=prompt_texts,
        prompt_instructions=instructions,
        frame_indices=tuple(indices),
        video_id=record.video_id,
        sample_id=int(sample_id),
    )


def focused_video(video, *, kinds: Sequence[str], share: float, seed: int, stream: int, sample_id: int):
    """``video`` (a ``SyntheticVideo``) keeping only the expressions of ``kinds`` for a ``share`` of the samples, the
    draw made per sample id (``default_rng([seed, stream, sample_id, 1])``); else ``video`` itself. A video without
    an expression of ``kinds`` then gives no clip.

    Why: a kind that the whole task's mix rarely asks is learnt from clips of it alone (a curriculum: stage G's
    motion kinds, docs/research/learnability.md). The draw does not depend on ``kinds`` or on the other samples,
    so a resumed stream focuses the same samples.
    """
    if share and np.random.default_rng([seed, stream, sample_id, 1]).random() < share:
        return dataclasses.replace(video, expressions=tuple(e for e in video.expressions if e.kind in kinds))
    return video


def sample_synthetic_clip(video, *, sample_id: int, seed: int, sampling: SamplingConfig) -> ClipSample | None:
    """:func:`sample_clip_from_record` for an in-memory ``vrshq.data.SyntheticVideo``."""
    rng = sample_rng(seed, sample_id)
    plan = _plan_sample(int(video.frames.shape[0]), [e.type_id for e in video.expressions], sampling, rng)
    if plan is None:
        return None
    indices = plan.indices
    exprs = [video.expressions[i] for i in plan.chosen]
    masks = np.stack([video.target_masks(e)[indices] for e in exprs])
    texts = tuple(e.text.strip() for e in exprs)
    prompt_texts, instructions = _prompts(texts, len(indices), rng, image=plan.image)
    return ClipSample(
        frames=np.ascontiguousarray(video.frames[indices]),
        masks=masks,
        expressions=texts,
        prompt_texts=prompt_texts,
        prompt_instructions=instructions,
        frame_indices=tuple(indices),
        video_id=f"synthetic-{sample_id}",
        sample_id=int(sample_id),
    )


# ------------------------------------------------------------------------------ Ray Data rows


def _to_row(sample: ClipSample) -> dict[str, Any]:
    return {
        "sample_id": sample.sample_id,
        "video_id": sample.video_id,
        "frames": sample.frames,
        "masks": sample.masks,
        "frame_indices": np.asarray(sample.frame_indices, dtype=np.int64),
        # strings with arbitrary content travel as one JSON column (no list-of-string block typing)
        "text_json": json.dumps(
            {
                "expressions": sample.expressions,
                "texts": sample.prompt_texts,
                "instructions": sample.prompt_instructions,
            }
        ),
    }


def _from_row(row: Mapping[str, Any]) -> ClipSample:
    text = json.loads(row["text_json"])
    return ClipSample(
        frames=np.asarray(row["frames"], dtype=np.uint8),
        masks=np.asarray(row["masks"], dtype=bool),
        expressions=tuple(text["expressions"]),
        prompt_texts=tuple(text["texts"]),
        prompt_instructions=tuple(text["instructions"]),
        frame_indices=tuple(int(i) for i in np.asarray(row["frame_indices"])),
        video_id=str(row["video_id"]),
        sample_id=int(row["sample_id"]),
    )


def sample_clip_rows(
    row: Mapping[str, Any],
    *,
    records: Sequence[Any],
    seed: int,
    sampling: SamplingConfig,
    storage_options: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Ray Data ``flat_map`` UDF: ``{"sample_id": s}`` -> ``[]`` (skipped) or one clip row.

    Args:
        row: holds ``sample_id``, the global sample number.
        records: the split's ``VideoRecord`` list (shipped once per task with ``fn_kwargs``).
        seed, sampling, storage_options: as in :func:`sample_clip_from_record`.
    """
    sample_id = int(row["sample_id"])
    record = records[video_index_for_sample(sample_id, len(records), seed=seed)]
    sample = sample_clip_from_record(
        record, sample_id=sample_id, seed=seed, sampling=sampling, storage_options=storage_options
    )
    return [] if sample is None else [_to_row(sample)]


def samples_to_batch(samples: Sequence[ClipSample]):
    """The model's ``TrainBatch`` of clip samples (prompts as sampled, tokenised by the model)."""
    import torch

    from vrshq.model.outputs import TrainBatch, TrainVideo
    from vrshq.model.prompts import VideoPrompt

    videos = []
    for s in samples:
        t = int(s.frames.shape[0])
        prompts = tuple(
            VideoPrompt(text=text, instruction=instr, num_frames=t)
            for text, instr in zip(s.prompt_texts, s.prompt_instructions)
        )
        # np.array copies: Ray hands out read-only views of its object store, which torch must not alias
        videos.append(
            TrainVideo(frames=torch.from_numpy(np.array(s.frames, dtype=np.uint8)),
                       masks=torch.from_numpy(np.array(s.masks, dtype=bool)), prompts=prompts,
                       expressions=tuple(s.expressions))
        )
    return TrainBatch(videos=tuple(videos))


def rows_to_batch(rows: Sequence[Mapping[str, Any]]):
    """``TrainBatch`` of rows made by :func:`sample_clip_rows`."""
    return samples_to_batch([_from_row(r) for r in rows])
