"""Readers of the ReVOS and MeViS layouts into :class:`~vrshq.data.VideoRecord` lists.

Layouts (method §8):

* ReVOS: ``<root>/JPEGImages/<video>/<frame>.jpg`` (video ids contain '/'),
  ``<root>/meta_expressions_<split>_.json`` (official names ``meta_expressions_train_.json`` and
  ``meta_expressions_valid_.json``; ``meta_expressions_<split>.json`` is accepted too),
  ``<root>/mask_dict.json`` and ``<root>/mask_dict_foreground.json``.
* MeViS: ``<root>/<split>/JPEGImages/<video>/<frame>.jpg``, ``<root>/<split>/meta_expressions.json``
  and ``<root>/<split>/mask_dict.json`` where it exists (train, valid_u).

Both readers only read the meta json (and check which annotation files exist): frames and masks
are decoded later, per video. The meta is validated completely and every problem is reported at
once, naming the video, the expression and the key.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from vrshq.data._fs import canonical_uri, exists, join_uri, read_json
from vrshq.data.errors import DataError
from vrshq.data.records import EXPRESSION_TYPE_IDS, ExpressionRecord, VideoRecord

__all__ = ["read_revos", "read_mevis", "parse_meta_expressions", "revos_meta_filenames", "FramesFrom"]

#: Where frames come from: the ``JPEGImages`` folder, or one mp4 per video under ``videos_subdir``.
FramesFrom = Literal["jpeg", "mp4"]

_MAX_LISTED_PROBLEMS = 20


def revos_meta_filenames(split: str) -> tuple[str, ...]:
    """Meta file names tried for a ReVOS split, in order (the official name has a trailing '_')."""
    return (f"meta_expressions_{split}_.json", f"meta_expressions_{split}.json")


def read_revos(
    root_uri: str,
    *,
    split: str,
    storage_options: Mapping[str, Any] | None = None,
    meta_file: str | None = None,
    dataset: str = "revos",
    frames_from: FramesFrom = "jpeg",
    videos_subdir: str = "videos",
) -> list[VideoRecord]:
    """Read a ReVOS-layout dataset (local folder or any fsspec URI).

    Args:
        root_uri: the folder holding ``JPEGImages/`` and the json files.
        split: ``"train"`` or ``"valid"`` (any name with a matching meta file).
        storage_options: passed to fsspec (e.g. s3fs ``key``/``secret``/``client_kwargs``).
        meta_file: meta json name (relative to ``root_uri``) or a full URI; by default the names of
            :func:`revos_meta_filenames` are tried in order.
        dataset: the ``dataset`` value of the records.
        frames_from: ``"jpeg"`` reads ``JPEGImages/<video>/``; ``"mp4"`` reads
            ``<videos_subdir>/<video>.mp4`` (as written by ``write_synthetic_revos(write_mp4=True)``).
        videos_subdir: folder of the mp4 files, relative to ``root_uri``.

    Returns:
        One record per video, in the meta file's order.

    Raises:
        DataError: the meta file is missing or malformed (every problem listed: video, expression, key).
    """
    root = canonical_uri(root_uri, storage_options)
    meta_uri = _find_meta(root, split, meta_file, storage_options)
    meta = read_json(meta_uri, storage_options, what="meta expressions file")
    videos = parse_meta_expressions(meta, uri=meta_uri, require_type_id=True)
    mask_dict_uri = _optional(join_uri(root, "mask_dict.json"), storage_options)
    foreground_uri = _optional(join_uri(root, "mask_dict_foreground.json"), storage_options)
    return [
        _record(dataset, split, root, "JPEGImages", video, frames_from, videos_subdir, mask_dict_uri, foreground_uri)
        for video in videos
    ]


def read_mevis(
    root_uri: str,
    *,
    split: str,
    storage_options: Mapping[str, Any] | None = None,
    meta_file: str | None = None,
    dataset: str = "mevis",
    frames_from: FramesFrom = "jpeg",
    videos_subdir: str = "videos",
) -> list[VideoRecord]:
    """Read a MeViS-layout split (``<root>/<split>/...``); see :func:`read_revos` for the arguments.

    MeViS expressions have no ``type_id`` (they are read as 0, referring) and the online ``valid``
    split has no ``obj_id``/``anno_id`` (read as empty) and no ``mask_dict.json``
    (``mask_dict_uri`` is None). The meta has no frame size: ``height``/``width`` are None.
    """
    split_root = join_uri(canonical_uri(root_uri, storage_options), split)
    meta_uri = _resolve_meta_file(split_root, meta_file) if meta_file else join_uri(split_root, "meta_expressions.json")
    meta = read_json(meta_uri, storage_options, what="meta expressions file")
    videos = parse_meta_expressions(meta, uri=meta_uri, require_type_id=False)
    mask_dict_uri = _optional(join_uri(split_root, "mask_dict.json"), storage_options)
    return [
        _record(dataset, split, split_root, "JPEGImages", video, frames_from, videos_subdir, mask_dict_uri, None)
        for video in videos
    ]


def parse_meta_expressions(
    meta: Any, *, uri: str, require_type_id: bool
) -> list[tuple[str, tuple[str, ...], int | None, int | None, tuple[ExpressionRecord, ...]]]:
    """Validate a parsed meta json and return ``(video_id, sorted frames, height, width, expressions)``.

    Frames are sorted because ``mask_dict`` lists are indexed by the position in the sorted frame
    list (method §8). ``obj_id``/``anno_id`` may be ints or decimal strings.

    Raises:
        DataError: naming ``uri`` and listing every problem (which key of which video/expression).
    """
    problems: list[str] = []
    if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict):
        raise DataError(uri, "meta expressions file must be a JSON object with a 'videos' object at the top level")
    out = []
    for video_id, entry in meta["videos"].items():
        where = f"video {video_id!r}"
        if not isinstance(entry, dict):
            problems.append(f"{where}: must be an object, got {type(entry).__name__}")
            continue
        frames = entry.get("frames")
        if "frames" not in entry:
            problems.append(f"{where}: key 'frames' is missing")
        elif not isinstance(frames, list) or not all(isinstance(f, str) and f for f in frames):
            problems.append(f"{where}: key 'frames' must be a list of non-empty frame names (str)")
        elif not frames:
            problems.append(f"{where}: key 'frames' is empty (a video needs at least one frame)")
        elif len(set(frames)) != len(frames):
            problems.append(f"{where}: key 'frames' lists a frame more than once")
        size = {}
        for key in ("height", "width"):
            value = entry.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                problems.append(f"{where}: key {key!r} must be a positive int, got {value!r}")
            size[key] = value
        raw_expressions = entry.get("expressions")
        if not isinstance(raw_expressions, dict):
            problems.append(
                f"{where}: key 'expressions' is missing" if "expressions" not in entry
                else f"{where}: key 'expressions' must be an object, got {type(raw_expressions).__name__}"
            )
            continue
        expressions = []
        for exp_id, raw in raw_expressions.items():
            record = _parse_expression(str(exp_id), raw, f"{where}, expression {exp_id!r}", require_type_id, problems)
            if record is not None:
                expressions.append(record)
        if len(problems) == 0:
            out.append((str(video_id), tuple(sorted(frames)), size["height"], size["width"], tuple(expressions)))
    if problems:
        listed = problems[:_MAX_LISTED_PROBLEMS]
        more = f" (and {len(problems) - len(listed)} more)" if len(problems) > len(listed) else ""
        raise DataError(uri, f"malformed meta expressions: {'; '.join(listed)}{more}")
    return out


def _parse_expression(
    exp_id: str, raw: Any, where: str, require_type_id: bool, problems: list[str]
) -> ExpressionRecord | None:
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be an object, got {type(raw).__name__}")
        return None
    before = len(problems)
    text = raw.get("exp")
    if "exp" not in raw:
        problems.append(f"{where}: key 'exp' is missing")
    elif not isinstance(text, str):
        problems.append(f"{where}: key 'exp' must be a str, got {type(text).__name__}")
    elif not text.strip():
        problems.append(f"{where}: key 'exp' is empty")
    ids = {}
    for key in ("obj_id", "anno_id"):
        ids[key] = _int_tuple(raw.get(key, []))
        if ids[key] is None:
            problems.append(f"{where}: key {key!r} must be a list of ints, got {raw.get(key)!r}")
    type_id = raw.get("type_id", None if require_type_id else 0)
    if type_id is None:
        problems.append(f"{where}: key 'type_id' is missing")
    elif isinstance(type_id, bool) or type_id not in EXPRESSION_TYPE_IDS:
        problems.append(f"{where}: key 'type_id' must be one of {EXPRESSION_TYPE_IDS}, got {type_id!r}")
    if len(problems) > before:
        return None
    return ExpressionRecord(exp_id=exp_id, text=text, obj_ids=ids["obj_id"], anno_ids=ids["anno_id"], type_id=int(type_id))


def _int_tuple(value: Any) -> tuple[int, ...] | None:
    """A list of ints (or decimal strings, as some datasets store ids) as a tuple; None if invalid."""
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        value = [value]  # a bare id (Ref-YouTube-VOS style obj_id "1")
    if not isinstance(value, list):
        return None
    out = []
    for item in value:
        if isinstance(item, int) and not isinstance(item, bool):
            out.append(item)
        elif isinstance(item, str) and item.strip().isdecimal():
            out.append(int(item))
        else:
            return None
    return tuple(out)


def _record(
    dataset: str,
    split: str,
    root: str,
    frames_subdir: str,
    video: tuple,
    frames_from: FramesFrom,
    videos_subdir: str,
    mask_dict_uri: str | None,
    foreground_uri: str | None,
) -> VideoRecord:
    video_id, frames, height, width, expressions = video
    if frames_from == "jpeg":
        frames_uri, video_uri = join_uri(root, frames_subdir, video_id), None
    elif frames_from == "mp4":
        frames_uri, video_uri = None, join_uri(root, videos_subdir, f"{video_id}.mp4")
    else:
        raise ValueError(f"frames_from must be 'jpeg' or 'mp4', got {frames_from!r}")
    return VideoRecord(
        dataset=dataset,
        split=split,
        video_id=video_id,
        frame_names=frames,
        frames_uri=frames_uri,
        video_uri=video_uri,
        height=height,
        width=width,
        expressions=expressions,
        mask_dict_uri=mask_dict_uri,
        foreground_uri=foreground_uri,
    )


def _resolve_meta_file(root: str, meta_file: str) -> str:
    return meta_file if "://" in meta_file or meta_file.startswith("/") else join_uri(root, meta_file)


def _find_meta(root: str, split: str, meta_file: str | None, storage_options: Mapping[str, Any] | None) -> str:
    if meta_file:
        return _resolve_meta_file(root, meta_file)
    candidates = [join_uri(root, name) for name in revos_meta_filenames(split)]
    for candidate in candidates:
        if exists(candidate, storage_options):
            return candidate
    raise DataError(
        root,
        f"no meta expressions file for split {split!r}: tried {[c.rsplit('/', 1)[1] for c in candidates]} "
        "(pass meta_file= to name it)",
    )


def _optional(uri: str, storage_options: Mapping[str, Any] | None) -> str | None:
    return uri if exists(uri, storage_options) else None
