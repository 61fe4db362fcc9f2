"""Typed records of a video-segmentation dataset: one :class:`VideoRecord` per video.

A record only points at files (URIs); frames and masks are decoded on demand by
:func:`vrshq.data.load_frames` and :func:`vrshq.data.load_expression_masks`, so that a whole
dataset's records fit in a Ray Data block or a manifest table.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ExpressionRecord", "VideoRecord", "EXPRESSION_TYPE_IDS", "normalize_eval_text"]

#: ReVOS ``type_id`` values: 0 referring, 1 reasoning, 2 no-target (the target is absent).
EXPRESSION_TYPE_IDS: tuple[int, ...] = (0, 1, 2)

_WHITESPACE = re.compile(r"\s+")


def normalize_eval_text(text: str) -> str:
    """Expression text as the official evaluation feeds it: lower-cased, whitespace collapsed.

    Method §1.3 (``RVE: load_target_frame``): inference lower-cases the expression and
    collapses its whitespace; training only strips it. Records keep the raw text so both are
    possible.

    >>> normalize_eval_text("  Which   Shape\\nnever moves? ")
    'which shape never moves?'
    """
    return _WHITESPACE.sub(" ", text).strip().lower()


@dataclass(frozen=True)
class ExpressionRecord:
    """One expression of a video.

    Attributes:
        exp_id: the expression's key in the meta json (a string, e.g. ``"0"``).
        text: the expression as written in the meta json (not normalised; see
            :func:`normalize_eval_text`).
        obj_ids: object ids within the video (ReVOS/MeViS ``obj_id``).
        anno_ids: keys of ``mask_dict.json``; the target mask is their union. Empty for
            no-target expressions and for splits without ground truth.
        type_id: 0 referring, 1 reasoning, 2 no-target (ReVOS; MeViS expressions are 0).
    """

    exp_id: str
    text: str
    obj_ids: tuple[int, ...]
    anno_ids: tuple[int, ...]
    type_id: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.exp_id, str) or not self.exp_id:
            raise ValueError(f"ExpressionRecord.exp_id must be a non-empty str, got {self.exp_id!r}")
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError(f"ExpressionRecord {self.exp_id!r}: text must be a non-empty str, got {self.text!r}")
        for name in ("obj_ids", "anno_ids"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise TypeError(f"ExpressionRecord {self.exp_id!r}: {name} must be a tuple of int, got {value!r}")
        if self.type_id not in EXPRESSION_TYPE_IDS:
            raise ValueError(
                f"ExpressionRecord {self.exp_id!r}: type_id must be one of {EXPRESSION_TYPE_IDS}, got {self.type_id!r}"
            )


@dataclass(frozen=True)
class VideoRecord:
    """One video and its expressions.

    Frames come from ``frames_uri`` (a folder of ``<frame>.jpg``) when it is set, else from
    ``video_uri`` (an mp4 decoded with decord).

    Attributes:
        dataset: dataset name, e.g. ``"revos"``, ``"mevis"``.
        split: split name as on disk, e.g. ``"valid"``, ``"valid_u"``.
        video_id: the video's key in the meta json; may contain '/' (``"UVO/all/2E4T5NCywcE"``).
        frame_names: sorted frame names without extension; mask lists are indexed by position here.
        frames_uri: folder holding ``<frame>.jpg``, or None.
        video_uri: mp4 file, or None.
        height, width: frame size from the meta json, or None when the meta has none (MeViS).
        expressions: the video's expressions (exp_ids unique).
        mask_dict_uri: ``mask_dict.json`` holding the ground truth, or None.
        foreground_uri: ``mask_dict_foreground.json`` (ReVOS robustness), or None.
    """

    dataset: str
    split: str
    video_id: str
    frame_names: tuple[str, ...]
    frames_uri: str | None
    video_uri: str | None
    height: int | None
    width: int | None
    expressions: tuple[ExpressionRecord, ...]
    mask_dict_uri: str | None = None
    foreground_uri: str | None = None

    def __post_init__(self) -> None:
        where = f"VideoRecord {self.dataset}/{self.split}/{self.video_id}"
        if not self.video_id:
            raise ValueError(f"{where}: video_id must be non-empty")
        if not isinstance(self.frame_names, tuple) or not all(isinstance(n, str) and n for n in self.frame_names):
            raise TypeError(f"{where}: frame_names must be a tuple of non-empty str")
        if self.frames_uri is None and self.video_uri is None:
            raise ValueError(f"{where}: one of frames_uri or video_uri must be set")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ValueError(f"{where}: {name} must be a positive int or None, got {value!r}")
        if not isinstance(self.expressions, tuple) or not all(isinstance(e, ExpressionRecord) for e in self.expressions):
            raise TypeError(f"{where}: expressions must be a tuple of ExpressionRecord")
        seen: set[str] = set()
        duplicates = sorted({e.exp_id for e in self.expressions if e.exp_id in seen or seen.add(e.exp_id)})
        if duplicates:
            raise ValueError(f"{where}: duplicate exp_id(s) {duplicates}")

    @property
    def num_frames(self) -> int:
        return len(self.frame_names)

    def expression(self, exp_id: str) -> ExpressionRecord:
        """The expression with this ``exp_id`` (KeyError naming the video if absent)."""
        for expression in self.expressions:
            if expression.exp_id == exp_id:
                return expression
        raise KeyError(f"video {self.video_id!r} has no expression {exp_id!r}")
