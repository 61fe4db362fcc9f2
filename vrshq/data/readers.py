"""Readers of the ReVOS and MeViS layouts into :class:`~vrshq.data.VideoRecord` lists.

Layouts (method §8):

* ReVOS: ``<root>/JPEGImages/<video>/<frame>.jpg`` (video ids contain '/'),
  ``<root>/meta_expressions_<split>_.json`` (official names ``meta_expressions_train_.json`` and
  ``meta_expressions_valid_.json``; ``meta_expressions_<split>.json`` is accepted too),
  ``<root>/mask_dict.json`` and ``<root>/mask_dict_foreground.json``.
* MeViS: ``<root>/<split>/JPEGImages/<video>/<frame>.jpg``, ``<root>/<split>/meta_expressions.json``
  and ``<root>/<split>/mask_dict.json`` where it exists (train, valid_u).

Both readers only read the meta json (and check which annotation files exist): frames and masks
are decoded later, per video. The meta is validated record by record, naming the video, the
expression and the key: by default any problem fails the read (every problem listed at once);
with ``problems=[]`` the bad records are left out and described there (:class:`RecordProblem`),
so a job can write them as ``errors/`` rows and run the rest. Video ids and frame names become
paths only through :func:`vrshq.data.paths.contained_uri`: one that would leave the dataset root is
a problem of its record.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from vrshq.data._fs import canonical_uri, exists, read_json
from vrshq.data.errors import DataError
from vrshq.data.paths import contained_uri, path_part_problem
from vrshq.data.records import EXPRESSION_TYPE_IDS, ExpressionRecord, VideoRecord
from vrshq.storage import join_uri

__all__ = [
    "FramesFrom",
    "MAX_FRAME_SIDE",
    "RecordProblem",
    "parse_meta_expressions",
    "parse_meta_records",
    "read_mevis",
    "read_revos",
    "revos_meta_filenames",
]

#: Where frames come from: the ``JPEGImages`` folder, or one mp4 per video under ``videos_subdir``.
FramesFrom = Literal["jpeg", "mp4"]

_MAX_LISTED_PROBLEMS = 20

#: Largest ``height``/``width`` a meta may state (a larger one is a bad size field, not a frame).
MAX_FRAME_SIDE = 65536


@dataclass(frozen=True)
class RecordProblem:
    """A record of a meta file that cannot be used, and what it costs.

    Attributes:
        video_id: the video's key in the meta.
        exp_ids: the expressions the problem costs: the one bad expression, or every expression of
            a bad video (empty when the video's expressions cannot be listed).
        uri: the file holding the record (the meta file).
        reason: what is wrong, naming the video, the expression and the key.
        error_type: the ``error_type`` of its ``errors/`` rows.
    """

    video_id: str
    exp_ids: tuple[str, ...]
    uri: str
    reason: str
    error_type: str = "InvalidRecord"  # PathEscapeError when an id or name would leave its root


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
    problems: list[RecordProblem] | None = None,
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
        problems: None (default): any bad record fails the read. A list: bad records are left out
            and appended to it (one :class:`RecordProblem` each); only a meta file that is missing,
            not JSON or without a ``videos`` object raises.

    Returns:
        One record per (good) video, in the meta file's order.

    Raises:
        DataError: the meta file is missing or malformed (every problem listed: video, expression, key).
    """
    root = canonical_uri(root_uri, storage_options)
    meta_uri = _find_meta(root, split, meta_file, storage_options)
    meta = read_json(meta_uri, storage_options, what="meta expressions file", note_duplicates=True)
    videos = _parse(meta, meta_uri, True, problems)
    mask_dict_uri = _optional(join_uri(root, "mask_dict.json"), storage_options)
    foreground_uri = _optional(join_uri(root, "mask_dict_foreground.json"), storage_options)
    return _records(dataset, split, root, "JPEGImages", videos, frames_from, videos_subdir, mask_dict_uri,
                    foreground_uri, meta_uri, problems)


def read_mevis(
    root_uri: str,
    *,
    split: str,
    storage_options: Mapping[str, Any] | None = None,
    meta_file: str | None = None,
    dataset: str = "mevis",
    frames_from: FramesFrom = "jpeg",
    videos_subdir: str = "videos",
    problems: list[RecordProblem] | None = None,
) -> list[VideoRecord]:
    """Read a MeViS-layout split (``<root>/<split>/...``); see :func:`read_revos` for the arguments.

    MeViS expressions have no ``type_id`` (they are read as 0, referring) and the online ``valid``
    split has no ``obj_id``/``anno_id`` (read as empty) and no ``mask_dict.json``
    (``mask_dict_uri`` is None). The meta has no frame size: ``height``/``width`` are None.
    """
    split_root = join_uri(canonical_uri(root_uri, storage_options), split)
    meta_uri = _resolve_meta_file(split_root, meta_file) if meta_file else join_uri(split_root, "meta_expressions.json")
    meta = read_json(meta_uri, storage_options, what="meta expressions file", note_duplicates=True)
    videos = _parse(meta, meta_uri, False, problems)
    mask_dict_uri = _optional(join_uri(split_root, "mask_dict.json"), storage_options)
    return _records(dataset, split, split_root, "JPEGImages", videos, frames_from, videos_subdir, mask_dict_uri,
                    None, meta_uri, problems)


def _parse(meta: Any, uri: str, require_type_id: bool, problems: list[RecordProblem] | None) -> list[tuple]:
    if problems is None:
        return parse_meta_expressions(meta, uri=uri, require_type_id=require_type_id)
    videos, found = parse_meta_records(meta, uri=uri, require_type_id=require_type_id)
    problems.extend(found)
    return videos


def _records(dataset: str, split: str, root: str, frames_subdir: str, videos: list[tuple], frames_from: FramesFrom,
             videos_subdir: str, mask_dict_uri: str | None, foreground_uri: str | None, meta_uri: str,
             problems: list[RecordProblem] | None) -> list[VideoRecord]:
    out = []
    for video in videos:
        try:
            out.append(_record(dataset, split, root, frames_subdir, video, frames_from, videos_subdir, mask_dict_uri,
                               foreground_uri))
        except DataError as exc:  # a video id that would leave the root
            if problems is None:
                raise
            problems.append(RecordProblem(video[0], tuple(e.exp_id for e in video[4]), exc.uri, exc.reason,
                                          type(exc).__name__))
    return out


def parse_meta_expressions(
    meta: Any, *, uri: str, require_type_id: bool
) -> list[tuple[str, tuple[str, ...], int | None, int | None, tuple[ExpressionRecord, ...]]]:
    """Validate a parsed meta json and return ``(video_id, sorted frames, height, width, expressions)``.

    Strict: any bad record fails the whole file (training wants all of its data or none). Jobs that
    go on past bad records use :func:`parse_meta_records`. Frames are sorted because ``mask_dict``
    lists are indexed by the position in the sorted frame list (method §8). ``obj_id``/``anno_id``
    may be ints or decimal strings.

    Raises:
        DataError: naming ``uri`` and listing every problem (which key of which video/expression).
    """
    videos, record_problems = parse_meta_records(meta, uri=uri, require_type_id=require_type_id)
    if record_problems:
        problems = [p.reason for p in record_problems]
        listed = problems[:_MAX_LISTED_PROBLEMS]
        more = f" (and {len(problems) - len(listed)} more)" if len(problems) > len(listed) else ""
        raise DataError(uri, f"malformed meta expressions: {'; '.join(listed)}{more}")
    return videos


def parse_meta_records(
    meta: Any, *, uri: str, require_type_id: bool
) -> tuple[list[tuple[str, tuple[str, ...], int | None, int | None, tuple[ExpressionRecord, ...]]],
           list[RecordProblem]]:
    """Validate a parsed meta json record by record: the good videos and expressions, and the problems.

    Frames are sorted because ``mask_dict`` lists are indexed by the position in the sorted frame
    list (method spec §8). ``obj_id``/``anno_id`` may be ints or decimal strings. A bad expression
    drops only itself; a bad video (no frames, bad size fields, no expressions object) drops itself
    and names every expression it held.

    Raises:
        DataError: only when the document as a whole is unusable (not an object with a ``videos``
            object): then no record can be read from it.
    """
    if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict):
        raise DataError(uri, "meta expressions file must be a JSON object with a 'videos' object at the top level")
    out = []
    problems: list[RecordProblem] = []
    duplicated_videos = set(getattr(meta["videos"], "duplicate_keys", ()))
    for video_id, entry in meta["videos"].items():
        video_id = str(video_id)
        where = f"video {video_id!r}"
        video_problems: list[str] = []
        if video_id in duplicated_videos:
            video_problems.append(f"{where} is listed more than once in 'videos' (which entry is meant is unknown)")
        if not isinstance(entry, dict):
            problems.append(RecordProblem(video_id, (), uri, f"{where}: must be an object, got {type(entry).__name__}"))
            continue
        raw_expressions = entry.get("expressions")
        exp_ids = tuple(str(k) for k in raw_expressions) if isinstance(raw_expressions, dict) else ()
        id_problem = path_part_problem(video_id)
        if id_problem is not None:
            video_problems.append(f"{where}: the video id {id_problem} (ids are resolved under the dataset root)")
        frames = entry.get("frames")
        if "frames" not in entry:
            video_problems.append(f"{where}: key 'frames' is missing")
        elif not isinstance(frames, list) or not all(isinstance(f, str) and f for f in frames):
            video_problems.append(f"{where}: key 'frames' must be a list of non-empty frame names (str)")
        elif not frames:
            video_problems.append(f"{where}: key 'frames' is empty (a video needs at least one frame)")
        elif len(set(frames)) != len(frames):
            video_problems.append(f"{where}: key 'frames' lists a frame more than once")
        else:
            bad = next(((f, why) for f in frames if (why := path_part_problem(f)) is not None), None)
            if bad is not None:
                video_problems.append(f"{where}: frame name {bad[0]!r} {bad[1]} (frames are resolved under the "
                                      "video's folder)")
        size = {}
        for key in ("height", "width"):
            value = entry.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or not 0 < value <= MAX_FRAME_SIDE):
                video_problems.append(f"{where}: key {key!r} must be an int in 1..{MAX_FRAME_SIDE}, got {value!r:.80}")
            size[key] = value
        if not isinstance(raw_expressions, dict):
            video_problems.append(
                f"{where}: key 'expressions' is missing" if "expressions" not in entry
                else f"{where}: key 'expressions' must be an object, got {type(raw_expressions).__name__}"
            )
        if video_problems:
            escapes = "resolved under" in " ".join(video_problems)
            problems.append(RecordProblem(video_id, exp_ids, uri, "; ".join(video_problems),
                                          "PathEscapeError" if escapes else "InvalidRecord"))
            continue
        expressions = []
        duplicated_exps = set(getattr(raw_expressions, "duplicate_keys", ()))
        for exp_id, raw in raw_expressions.items():
            exp_problems: list[str] = []
            if exp_id in duplicated_exps:
                exp_problems.append(f"{where}, expression {exp_id!r} is listed more than once (which entry is meant "
                                    "is unknown)")
            record = _parse_expression(str(exp_id), raw, f"{where}, expression {exp_id!r}", require_type_id,
                                       exp_problems)
            if record is not None and not exp_problems:
                expressions.append(record)
            else:
                problems.append(RecordProblem(video_id, (str(exp_id),), uri, "; ".join(exp_problems)))
        out.append((video_id, tuple(sorted(frames)), size["height"], size["width"], tuple(expressions)))
    return out, problems


def _parse_expression(
    exp_id: str, raw: Any, where: str, require_type_id: bool, problems: list[str]
) -> ExpressionRecord | None:
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be an object, got {type(raw).__name__}")
        return None
    before = len(problems)
    if not exp_id:
        problems.append(f"{where}: the expression id is empty")
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
        frames_uri, video_uri = contained_uri(join_uri(root, frames_subdir), video_id, what="video id"), None
    elif frames_from == "mp4":
        frames_uri, video_uri = None, contained_uri(join_uri(root, videos_subdir), f"{video_id}.mp4", what="video id")
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
