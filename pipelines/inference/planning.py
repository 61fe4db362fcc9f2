"""Planning a run from a manifest Parquet with Arrow kernels, so the driver's cost stays flat.

The driver reads only the four key columns of the manifest and the committed pairs of the output
(``dataset, split, video_id, exp_id``: tens of bytes per pair), joined into one string per pair, and decides
with vectorised Arrow operations (sorts and binary searches: Arrow's hash tables of a million
strings cost several times their size):

* duplicates: a (video, expression) listed twice keeps its first row; the others become error rows;
* done pairs: the manifest pairs found in the sorted committed scores keys (a pair is done when it
  has a scores row, whether in a fresh part or in a compacted file) -- an anti-join. The committed
  keys come from the output's pair index plus the scores parts it does not cover yet
  (:mod:`pipelines.io.pair_index`): one file to read after a finished run, however many parts;
* ``max_videos``: the first N pending videos in manifest order.

What leaves the driver is a sorted ``int64`` array of the pending manifest rows (8 bytes per
pending pair, in the object store) and one small work unit per manifest row group. The rows
themselves (frame names, expression texts) are read by Ray Data tasks, which turn each slice of
``rows_per_block`` manifest rows into work items (one row per video; the inference dataset makes
each one a block of its own, so the videos spread over the readers and model actors). No per-pair
Python object is ever built on the driver.

A video whose manifest rows are not contiguous (or straddle two slices) becomes two work items;
both are correct (each pair is segmented once), only the frames are read twice. Manifests written
by :func:`pipelines.inference.manifest.write_manifest` list each video's rows together.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.io.pair_index import KEY_COLUMNS, SEP as _SEP, pair_strings as _pair_strings, read_committed
from pipelines.io.storage import arrow_filesystem, filesystem_for
from schemas import MANIFEST_SCHEMA, validate_table

__all__ = ["ITEM_SCHEMA", "KEY_COLUMNS", "ManifestPlan", "ManifestPlanError", "count_input_errors", "input_error_tag",
           "manifest_items", "plan_manifest"]

_LOG = logging.getLogger(__name__)

#: One work item per video: what the frame-reading stage takes.
ITEM_SCHEMA = pa.schema([pa.field(name, pa.string()) for name in ("dataset", "split", "video_id", "item_json")])


class ManifestPlanError(ValueError):
    """The manifest cannot be planned (unreadable, wrong schema); the message names the file."""


@dataclasses.dataclass(frozen=True)
class ManifestPlan:
    """What a run will do, as arrays and counts (no per-pair Python objects).

    Attributes:
        manifest: the manifest URI (or a placeholder name when ``data`` holds the manifest).
        files: the manifest's Parquet files (filesystem paths), in row order.
        chunks: one dict per row group holding pending rows: ``path``, ``row_group``, ``first_row``.
        pending_rows: sorted global row numbers of the pending pairs' manifest rows.
        duplicates: key rows (KEY_COLUMNS) of manifest rows that repeat an earlier (video, expression).
        clustered: whether every video's manifest rows are contiguous.
    """

    manifest: str
    files: list[str]
    chunks: list[dict[str, Any]]
    pending_rows: np.ndarray
    duplicates: pa.Table
    pairs_total: int
    pairs_done: int
    pairs_pending: int
    videos_pending: int
    clustered: bool
    seconds_done: float = 0.0
    data: bytes | None = None  # the manifest itself when it was given in memory (a dataset input)


def _done_pairs(output: str, storage_options: Mapping[str, Any] | None, fold: bool) -> pa.ChunkedArray:
    """The committed pair strings of ``output``, sorted, from its index and the scores parts it misses
    (:mod:`pipelines.io.pair_index`); ``fold`` brings the index up to date on the way."""
    committed = read_committed(output, fold=fold, storage_options=storage_options)
    done = committed.pairs
    if not committed.sorted and not _is_sorted(done):
        done = done.take(pc.sort_indices(done))
    return done


def _manifest_files(uri: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, list[str]]:
    fs, path = filesystem_for(uri, storage_options)
    try:
        if fs.isdir(path):
            files = sorted(p for p in fs.find(path) if p.endswith(".parquet")
                           and not p.rsplit("/", 1)[-1].startswith((".", "_")))
        else:
            files = [path]
    except OSError as exc:
        raise ManifestPlanError(f"manifest {uri!r} is not readable: {exc}") from exc
    if not files:
        raise ManifestPlanError(f"manifest {uri!r} holds no Parquet file")
    return fs, files


def check_manifest(uri: str, *, storage_options: Mapping[str, Any] | None = None) -> None:
    """Check before Ray starts that the manifest ``uri`` is there and that every file of it is Parquet of
    the manifest schema; reads the footers only, so it costs the same for 1k and 1M videos.

    Raises:
        ManifestPlanError: naming the file and the problem.
    """
    fs, files = _manifest_files(uri, storage_options)
    filesystem = arrow_filesystem(fs)
    for path in files:
        try:
            schema = _open(path, filesystem, None).schema_arrow
        except (OSError, pa.ArrowInvalid) as exc:
            raise ManifestPlanError(f"manifest {uri!r} is not readable Parquet ({path}): {exc}") from exc
        try:
            validate_table(schema.empty_table(), MANIFEST_SCHEMA, what=f"manifest {uri}")
        except ValueError as exc:  # SchemaValidationError
            raise ManifestPlanError(str(exc)) from exc


@dataclasses.dataclass
class _Keys:
    """The manifest's keys, one row group at a time: pair strings, video strings, and which rows are safe."""

    pairs: list[pa.Array] = dataclasses.field(default_factory=list)
    videos: list[pa.Array] = dataclasses.field(default_factory=list)
    unsafe: list[np.ndarray] = dataclasses.field(default_factory=list)  # global row numbers
    groups: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    rows: int = 0


def _open(path: str, filesystem: Any, data: bytes | None) -> pq.ParquetFile:
    """The manifest file at ``path``, or the in-memory manifest ``data``."""
    return pq.ParquetFile(pa.BufferReader(data)) if data is not None else pq.ParquetFile(path, filesystem=filesystem)


def _read_keys(fs: Any, files: list[str], uri: str, data: bytes | None = None) -> _Keys:
    """Read the KEY_COLUMNS row group by row group, keeping only two joined string columns (the pair and the
    video), so the driver never holds the four columns and their decode buffers of the whole manifest."""
    from pipelines.inference.config import is_safe_partition_value

    keys = _Keys()
    filesystem = arrow_filesystem(fs) if fs is not None else None
    for path in files:
        try:
            handle = _open(path, filesystem, data)
            validate_table(handle.schema_arrow.empty_table(), MANIFEST_SCHEMA, what=f"manifest {uri}")
            for index in range(handle.metadata.num_row_groups):
                table = handle.read_row_group(index, columns=KEY_COLUMNS)
                columns = [table[c].cast(pa.string()) for c in KEY_COLUMNS]
                keys.pairs.append(_pair_strings(*columns).combine_chunks())
                keys.videos.append(pc.binary_join_element_wise(*columns[:3], _SEP).combine_chunks())
                for name in ("dataset", "split"):
                    bad = [v for v in pc.unique(table[name]).to_pylist() if not is_safe_partition_value(v)]
                    if bad:
                        _LOG.error("manifest %s: rows with unsafe %s %s skipped", path, name, bad)
                        hit = pc.is_in(table[name], value_set=pa.array(bad, pa.string()))
                        keys.unsafe.append(keys.rows + np.flatnonzero(hit.to_numpy(zero_copy_only=False)))
                keys.groups.append({"path": path, "row_group": index, "first_row": keys.rows,
                                    "num_rows": table.num_rows})
                keys.rows += table.num_rows
        except (OSError, pa.ArrowInvalid) as exc:
            raise ManifestPlanError(f"manifest {uri!r} is not readable Parquet ({path}): {exc}") from exc
        except ValueError as exc:  # SchemaValidationError
            raise ManifestPlanError(str(exc)) from exc
    return keys


def _is_sorted(values: pa.Array) -> bool:
    """Whether ``values`` is in ascending order (one pass; compacted scores and most manifests already are)."""
    if len(values) < 2:
        return True
    return bool(pc.all(pc.less_equal(values.slice(0, len(values) - 1), values.slice(1))).as_py())


def _member(needles: pa.Array, ordered: pa.Array | pa.ChunkedArray, step: int = 1 << 16) -> np.ndarray:
    """Whether each of ``needles`` is in ``ordered`` (sorted ascending), by binary search; ``step`` needles at a
    time, so the strings taken for the comparison stay a few MB whatever the number of pairs."""
    found = np.zeros(len(needles), dtype=bool)
    for start in range(0, len(needles), step):
        chunk = needles.slice(start, step)
        positions = np.minimum(pc.search_sorted(ordered, chunk).to_numpy(), len(ordered) - 1)
        found[start:start + len(chunk)] = pc.equal(ordered.take(pa.array(positions)), chunk).to_numpy(
            zero_copy_only=False)
    return found


def _split_pairs(pairs: pa.Array) -> pa.Table:
    parts = pc.split_pattern(pairs, _SEP, max_splits=3)
    return pa.table({c: pc.list_element(parts, i) for i, c in enumerate(KEY_COLUMNS)})


def plan_manifest(
    manifest: str | bytes,
    output: str,
    *,
    max_videos: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    fold_index: bool = False,
) -> ManifestPlan:
    """Plan the pending pairs of ``manifest`` against what ``output`` has committed.

    Every step is an Arrow kernel over one string column per key, sorted rather than hashed (Arrow's
    hash tables of a million strings cost several times their size): duplicates are equal neighbours
    after a stable sort, done pairs are found by binary search (``search_sorted``) in the sorted
    committed pairs, ``max_videos`` takes the first videos of ``unique`` (first-appearance order).

    ``manifest`` is a URI, or the bytes of a manifest Parquet file (a dataset input: it then travels
    to the manifest-reading tasks through the object store, never through storage). ``fold_index``
    writes the committed pairs read from scores parts into the output's pair index
    (:mod:`pipelines.io.pair_index`), so the next plan reads one file; ``infer`` asks for it under its lock.

    Raises:
        ManifestPlanError: the manifest is missing, not Parquet, or not of ``MANIFEST_SCHEMA``.
    """
    data = bytes(manifest) if isinstance(manifest, (bytes, bytearray, memoryview)) else None
    if data is not None:
        manifest, fs, files = "<in-memory manifest>", None, ["<in-memory manifest>"]
    else:
        fs, files = _manifest_files(manifest, storage_options)
    keys = _read_keys(fs, files, manifest, data)
    pairs = pa.chunked_array(keys.pairs, pa.string()).combine_chunks() if keys.pairs else pa.array([], pa.string())
    keys.pairs.clear()
    keep = np.ones(len(pairs), dtype=bool)
    for rows in keys.unsafe:
        keep[rows] = False
    duplicates = pa.table({c: pa.array([], pa.string()) for c in KEY_COLUMNS})
    if len(pairs) > 1:
        # Sort, not hash: a hash table of a million strings costs several times their size in Arrow.
        if _is_sorted(pairs):
            order, ordered = pa.array(np.arange(len(pairs), dtype=np.uint64)), pairs
        else:
            order = pc.sort_indices(pairs)  # stable: the first row of a repeated pair comes first
            ordered = pairs.take(order)
        repeated = pc.equal(ordered.slice(1), ordered.slice(0, len(ordered) - 1)).to_numpy(zero_copy_only=False)
        del ordered
        if repeated.any():
            later = order.to_numpy()[1:][repeated]
            duplicates = _split_pairs(pairs.take(pa.array(later)))
            keep[later] = False
        del order
    pairs_total = int(keep.sum())
    started = time.perf_counter()
    done = _done_pairs(output, storage_options, fold_index)
    if len(done):
        is_done = _member(pairs, done)
        pairs_done = int((keep & is_done).sum())
        keep &= ~is_done
    else:
        pairs_done = 0
    del done
    seconds_done = time.perf_counter() - started
    del pairs
    rows = np.flatnonzero(keep).astype(np.int64)
    videos = pa.chunked_array(keys.videos, pa.string()).combine_chunks() if keys.videos else pa.array([], pa.string())
    keys.videos.clear()
    pending_videos = videos.take(pa.array(rows))
    del videos
    order = pc.unique(pending_videos)  # first-appearance order
    if max_videos is not None and len(order) > max_videos:
        chosen = pc.is_in(pending_videos, value_set=order.slice(0, max_videos)).to_numpy(zero_copy_only=False)
        rows, pending_videos, order = rows[chosen], pending_videos.filter(pa.array(chosen)), order.slice(0, max_videos)
    # Clustered: the pending rows of each video form one run in manifest order.
    runs = 1 + int(pc.sum(pc.not_equal(pending_videos.slice(1), pending_videos.slice(0, len(pending_videos) - 1))
                          ).as_py() or 0) if len(pending_videos) else 0
    starts = np.array([g["first_row"] for g in keys.groups], dtype=np.int64)
    ends = starts + np.array([g["num_rows"] for g in keys.groups], dtype=np.int64)
    chunks = [
        {"path": g["path"], "row_group": g["row_group"], "first_row": g["first_row"]}
        for g, lo, hi in zip(keys.groups, starts, ends)
        if np.searchsorted(rows, hi) > np.searchsorted(rows, lo)
    ]
    return ManifestPlan(
        manifest=manifest, files=files, chunks=chunks, pending_rows=rows, duplicates=duplicates,
        pairs_total=pairs_total, pairs_done=pairs_done, pairs_pending=len(rows), videos_pending=len(order),
        clustered=runs == len(order), seconds_done=seconds_done, data=data,
    )


def input_error_tag(run_id: str) -> str:
    """The batch-id prefix of the errors parts that :func:`manifest_items` writes for ``run_id``."""
    return "input-" + hashlib.sha1(run_id.encode()).hexdigest()[:8]


def manifest_items(
    batch: dict[str, np.ndarray],
    *,
    manifest: str,
    pending_rows: Any,
    manifest_data: Any = None,
    rows_per_block: int,
    output: str,
    run_fields: Mapping[str, str],
    storage_options: Mapping[str, Any] | None = None,
) -> Iterator[pa.Table]:
    """Ray Data UDF over ``ManifestPlan.chunks``: the work items (:data:`ITEM_SCHEMA`) of each row group.

    Reads ``rows_per_block`` manifest rows at a time, keeps the pending ones, groups them by video
    with :func:`pipelines.inference.run.records_from_manifest` (which also turns invalid expression rows
    into error rows, written here under :func:`input_error_tag`) and yields one block per slice.
    ``pending_rows`` is the plan's row array or an ``ObjectRef`` to it; ``manifest_data`` the in-memory
    manifest's bytes (or a reference to them) when the plan was made from bytes.
    """
    import ray

    rows = ray.get(pending_rows) if isinstance(pending_rows, ray.ObjectRef) else pending_rows
    data = ray.get(manifest_data) if isinstance(manifest_data, ray.ObjectRef) else manifest_data
    filesystem = None if data is not None else arrow_filesystem(filesystem_for(manifest, storage_options)[0])
    error_tag = input_error_tag(run_fields["run_id"])
    for path, row_group, first_row in zip(batch["path"], batch["row_group"], batch["first_row"]):
        handle = _open(str(path), filesystem, data)
        row = int(first_row)
        carried: pa.Table | None = None  # the last video of a slice: its rows may go on in the next slice
        batches = handle.iter_batches(batch_size=rows_per_block, row_groups=[int(row_group)])
        record_batch = next(batches, None)
        while record_batch is not None:
            following = next(batches, None)
            numbers = np.arange(row, row + record_batch.num_rows, dtype=np.int64)
            row += record_batch.num_rows
            positions = np.searchsorted(rows, numbers)
            keep = (positions < len(rows)) & (rows[np.minimum(positions, max(len(rows) - 1, 0))] == numbers)
            table = pa.Table.from_batches([record_batch]).filter(pa.array(keep))
            if carried is not None:
                table = pa.concat_tables([carried, table])
                carried = None
            if following is not None and table.num_rows:
                table, carried = _split_last_video(table)
            if table.num_rows:
                yield from _items(table, path=str(path), tag=f"{error_tag}-" + hashlib.sha1(
                    f"{path}\x1f{row_group}\x1f{row}".encode()).hexdigest()[:16], output=output,
                    run_fields=run_fields, storage_options=storage_options, check_annotation_files=data is None)
            record_batch = following


def _split_last_video(table: pa.Table) -> tuple[pa.Table, pa.Table | None]:
    """``table`` without the trailing rows of its last video, and those rows."""
    keys = [table.column(c).to_numpy(zero_copy_only=False) for c in ("dataset", "split", "video_id")]
    last = tuple(k[-1] for k in keys)
    start = table.num_rows
    while start > 0 and tuple(k[start - 1] for k in keys) == last:
        start -= 1
    return table.slice(0, start), table.slice(start)


def _items(table: pa.Table, *, path: str, tag: str, output: str, run_fields: Mapping[str, str],
           storage_options: Mapping[str, Any] | None, check_annotation_files: bool) -> Iterator[pa.Table]:
    """Work items of ``table``'s videos; bad rows and, for a manifest read from its files
    (``check_annotation_files``), expressions whose annotation file is unreadable or lacks their ground
    truth become error rows here, before any model work (a dataset's records were checked on the driver)."""
    from pipelines.inference.input_check import check_annotations
    from pipelines.inference.run import records_from_manifest
    from pipelines.inference.video_io import item_to_json
    from pipelines.io.writers import write_batch
    from schemas import ERRORS_SCHEMA

    table = validate_table(table, MANIFEST_SCHEMA, what=path)
    records, errors = records_from_manifest(table)
    if check_annotation_files:
        records, annotation_errors = check_annotations(records, storage_options=storage_options,
                                                       unreadable_files="rows")
        errors = errors + annotation_errors
    if errors:
        rows = pa.Table.from_pylist([{**e, **run_fields} for e in errors], schema=ERRORS_SCHEMA)
        write_batch(output, {"errors": rows}, batch_id=tag, storage_options=storage_options)
    items = [{"dataset": r.dataset, "split": r.split, "video_id": r.video_id, "item_json": item_to_json(r)}
             for r in records if r.expressions]
    if items:
        yield pa.Table.from_pylist(items, schema=ITEM_SCHEMA)


def count_input_errors(output: str, run_id: str, *, storage_options: Mapping[str, Any] | None = None) -> int:
    """Rows of the errors parts :func:`manifest_items` wrote for ``run_id`` (from Parquet footers only)."""
    from pipelines.io.writers import list_parts

    tag = input_error_tag(run_id)
    fs, _ = filesystem_for(output, storage_options)
    filesystem = arrow_filesystem(fs)
    return sum(pq.ParquetFile(p.path, filesystem=filesystem).metadata.num_rows
               for p in list_parts(output, "errors", storage_options=storage_options) if p.batch_id.startswith(tag))
