"""Benchmark-server submission zips written straight from the masks table, one video at a time.

Layouts (method §7, ``tools/zip_mp_mevis.py`` and ``tools/zip_mp_refytvos.py``):

* ``mevis`` (MeViS ``valid`` on CodaLab): ``<video>/<exp_id>/<frame>.png`` at the zip root;
* ``refytvos`` (Ref-YouTube-VOS ``valid``): ``Annotations/<video>/<exp_id>/<frame>.png``.

PNGs are 8-bit grayscale 0/255 at the original frame size, as the official evaluation writes
them. Unlike the official zip tools (§9 item 14: they delete the prediction folder by default),
nothing is ever deleted: the zip is written to a temporary name next to the target and moved into
place at the end, and an existing zip is only replaced when the caller asks for it.
"""
from __future__ import annotations

import dataclasses
import logging
import uuid
import zipfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pipelines.evaluation.png_masks import ANNOTATIONS_DIR, encode_png_mask, png_mask_path
from pipelines.evaluation.scoring import iter_video_masks, masks_from_table
from pipelines.io.storage import filesystem_for
from vrshq.data import DataError, VideoRecord, decode_rle

__all__ = ["LAYOUTS", "ExportSummary", "export_zip"]

_LOG = logging.getLogger(__name__)

#: Server layout name -> folder prefix inside the zip.
LAYOUTS: dict[str, str] = {"mevis": "", "refytvos": ANNOTATIONS_DIR}


@dataclasses.dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_zip` wrote, and the problems that make the submission incomplete."""

    zip_uri: str
    videos: int
    expressions: int
    frames: int
    problems: list[str]


class _StreamWriter:
    """A write-only, non-seekable view of a file, so ``zipfile`` streams (data descriptors).

    Remote fsspec files cannot seek while writing; hiding ``seek`` makes zipfile take the same
    streaming path on every filesystem.
    """

    def __init__(self, handle: Any):
        self._handle = handle
        self._position = 0

    def write(self, data: bytes) -> int:
        self._handle.write(data)
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        self._handle.flush()

    def close(self) -> None:  # the owner closes the real handle
        pass


def export_zip(
    masks_uri: str,
    zip_uri: str,
    *,
    layout: str,
    dataset: str | None = None,
    split: str | None = None,
    records: Sequence[VideoRecord] | None = None,
    storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    compress_level: int = 6,
    on_video: Callable[[int, str], None] | None = None,
) -> ExportSummary:
    """Write the masks of one (dataset, split) as a server zip.

    Args:
        masks_uri: the masks Parquet dataset (``<run>/masks``).
        zip_uri: the zip to write (local or remote).
        layout: a key of :data:`LAYOUTS`.
        dataset, split: the partition to export (None: all rows of the table).
        records: the split's videos; when given, every expression must have a mask for every
            frame (the server rejects or zero-scores incomplete submissions) and the problems are
            listed in the summary. Without records the table's frames are written as they are.
        overwrite: replace an existing ``zip_uri``; otherwise refuse.
        compress_level: PNG zlib level (6: smallest upload; 1: ~3x faster encoding).
        on_video: progress callback ``(videos_done, video_id)``.

    Raises:
        FileExistsError: ``zip_uri`` exists and ``overwrite`` is False.
        ValueError: unknown ``layout``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: must be one of {sorted(LAYOUTS)}")
    fs, path = filesystem_for(zip_uri, storage_options)
    if fs.exists(path) and not overwrite:
        raise FileExistsError(f"{zip_uri} exists; pass overwrite=True (--overwrite) to replace it")
    prefix = LAYOUTS[layout]
    by_id = {r.video_id: r for r in records} if records is not None else None
    seen: set[str] = set()
    problems: list[str] = []
    counts = {"videos": 0, "expressions": 0, "frames": 0}
    tmp_path = f"{path}.partial-{uuid.uuid4().hex[:8]}"
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    try:
        with fs.open(tmp_path, "wb") as handle:
            with zipfile.ZipFile(_StreamWriter(handle), "w", compression=zipfile.ZIP_STORED) as archive:
                for (_, _, video_id), rows in iter_video_masks(masks_uri, dataset=dataset, split=split,
                                                               storage_options=storage_options):
                    seen.add(video_id)
                    written = _write_video(archive, prefix, video_id, rows, by_id, problems, compress_level)
                    counts["videos"] += 1
                    counts["expressions"] += written[0]
                    counts["frames"] += written[1]
                    if on_video is not None:
                        on_video(counts["videos"], video_id)
        if by_id is not None:
            for video_id in sorted(set(by_id) - seen):
                problems.append(f"video {video_id!r}: no masks in the table ({len(by_id[video_id].expressions)} "
                                "expression(s) missing from the zip)")
        fs.mv(tmp_path, path)
    except BaseException:
        if fs.exists(tmp_path):
            fs.rm(tmp_path)  # our own partial file, never the user's
        raise
    return ExportSummary(zip_uri=zip_uri, videos=counts["videos"], expressions=counts["expressions"],
                         frames=counts["frames"], problems=problems)


def _write_video(archive: zipfile.ZipFile, prefix: str, video_id: str, rows: Any,
                 by_id: dict[str, VideoRecord] | None, problems: list[str], level: int) -> tuple[int, int]:
    """Write one video's PNGs; returns (expressions, frames) written."""
    expressions = frames = 0
    if by_id is not None:
        video = by_id.get(video_id)
        if video is None:
            problems.append(f"video {video_id!r} is in the masks table but not in the dataset; not exported")
            return 0, 0
        predictions, _ = masks_from_table(rows, video)
        for expression in video.expressions:
            masks = predictions.get(expression.exp_id)
            if masks is None or isinstance(masks, BaseException):
                problems.append(f"video {video_id!r} expression {expression.exp_id!r}: "
                                + ("no masks in the table" if masks is None else str(masks)))
                continue
            for name, mask in zip(video.frame_names, masks):
                archive.writestr(png_mask_path(prefix, video_id, expression.exp_id, name),
                                 encode_png_mask(mask, compress_level=level))
            expressions += 1
            frames += len(masks)
        return expressions, frames
    columns = rows.select(["exp_id", "frame_name", "height", "width", "rle_counts"]).to_pydict()
    bad: set[str] = set()
    for exp_id, name, height, width, counts in zip(*columns.values()):
        try:
            mask: np.ndarray = decode_rle({"size": [height, width], "counts": counts}, height=height, width=width,
                                          uri="masks table", where=f"video {video_id!r} expression {exp_id!r} "
                                          f"frame {name!r}")
        except DataError as exc:
            problems.append(str(exc))
            bad.add(exp_id)
            continue
        archive.writestr(png_mask_path(prefix, video_id, exp_id, name), encode_png_mask(mask, compress_level=level))
        frames += 1
    return len(set(columns["exp_id"]) - bad), frames
