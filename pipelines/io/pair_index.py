"""The index of an output's committed (video, expression) pairs: resume reads one file, not every scores part.

A pair is committed when the scores table has its row (:mod:`pipelines.io.writers`). Reading the
key columns of every scores part costs one footer and two column chunks per file: seconds for the
12,500 parts of a million pairs, minutes for a hundred times that. The index holds the same pairs
in a few Parquet files under ``<output>/_index/`` (outside every table, so no table reader sees
them), one row per scores row::

    pair    dataset<US>split<US>video_id<US>exp_id, sorted (the planner's key, see
            pipelines.inference.planning)
    part    the scores file that holds the row, as a position in the file list of the footer
    model   the row's model, dictionary-encoded

and in the footer's key-value metadata the scores files it covers (path under ``scores/``, size
and version: the ETag on object stores, else the mtime) and their models. A resume whose listing
still shows every covered file unchanged reads the footer and the ``pair`` column only; the
one-model check before a run reads the footer only.

The index is a cache that checks itself against the listing of the scores table, so it is never
wrong, only incomplete:

* an entry counts only while its part is listed with the same size and version: a part that
  compaction replaced, a user deleted or a retry rewrote drops its entries;
* a listed part that no index file covers (written since the last fold, by a killed run, or by
  compaction) is read directly, like any part, compacted or fresh;
* :func:`read_committed` with ``fold=True`` writes what it read as one new sorted index file
  (atomically) and then deletes the index files it replaces. A kill in between leaves two files
  that cover the same parts; each part's entries are then taken from one of them only, so no
  pair is ever counted twice or lost.

``infer`` folds when it plans (under its output lock) and again at the end of a run, so the next
resume reads one index file; ``jobs.compact`` folds after compacting. Concurrent folds (there are
none under the lock) would still leave only correct entries.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.io.storage import arrow_filesystem, filesystem_for, join_uri, write_bytes_atomic
from pipelines.io.writers import PartFile, list_parts

__all__ = ["INDEX_FOLDER", "KEY_COLUMNS", "SEP", "Committed", "fold_index", "pair_strings", "read_committed"]

_LOG = logging.getLogger(__name__)

#: The index's folder under the output (a sibling of the tables).
INDEX_FOLDER = "_index"
#: The key of a (video, expression) pair in every table.
KEY_COLUMNS = ["dataset", "split", "video_id", "exp_id"]
#: Joins the key columns into one string: the unit separator, never part of a partition value.
SEP = "\x1f"
_PREFIX, _SUFFIX = "pairs-", ".parquet"
_PARTS_KEY, _MODELS_KEY = b"vrshq.pair_index.parts", b"vrshq.pair_index.models"
#: Scores files up to this size are read whole (fresh parts are a few KB); larger (compacted) ones by column.
_WHOLE_FILE_BYTES = 1 << 20
_SCHEMA = pa.schema([pa.field("pair", pa.string()), pa.field("part", pa.int32()),
                     pa.field("model", pa.dictionary(pa.int32(), pa.string()))])


def pair_strings(dataset: Any, split: Any, video_id: Any, exp_id: Any) -> pa.Array:
    """One ``dataset<US>split<US>video_id<US>exp_id`` string per row (arrays or scalars): one sortable key."""
    return pc.binary_join_element_wise(dataset, split, video_id, exp_id, SEP)


@dataclasses.dataclass
class Committed:
    """What :func:`read_committed` found.

    Attributes:
        pairs: the pair strings of every committed scores row (sorted when ``fold`` was asked or one
            complete index file was read; duplicates only if the scores table holds a pair twice).
        models: the models of those rows, sorted (when asked for).
        parts: scores files listed.
        parts_read: scores files read directly because no index file covered them.
        index_files: index files read.
        stale_rows: index rows dropped because their part is gone or changed.
        folded: whether a new index file was written.
        sorted: whether ``pairs`` is known to be sorted (one complete index file, or a fold).
    """

    pairs: pa.ChunkedArray | None
    models: list[str] | None
    parts: int = 0
    parts_read: int = 0
    index_files: int = 0
    stale_rows: int = 0
    folded: bool = False
    sorted: bool = False


def _index_files(fs: Any, folder: str) -> list[str]:
    """The committed index files, newest name first (hidden temporary files of an unfinished write are skipped)."""
    if not fs.exists(folder):
        return []
    names = [p for p in fs.find(folder) if p.rsplit("/", 1)[-1].startswith(_PREFIX) and p.endswith(_SUFFIX)]
    return sorted(names, reverse=True)


@dataclasses.dataclass
class _Rows:
    """Rows gathered from index files and parts: pair strings, listing positions of their parts, models."""

    pairs: list[pa.Array] = dataclasses.field(default_factory=list)
    parts: list[np.ndarray] = dataclasses.field(default_factory=list)  # for a fold
    models: list[pa.Array] = dataclasses.field(default_factory=list)  # the distinct models of each source
    row_models: list[np.ndarray] = dataclasses.field(default_factory=list)  # per row, into model_names (a fold)
    model_names: dict[str, int] = dataclasses.field(default_factory=dict)

    def model_ids(self, names: list[str]) -> np.ndarray:
        """The positions of ``names`` in :attr:`model_names` (added where new)."""
        return np.array([self.model_names.setdefault(n, len(self.model_names)) for n in names], dtype=np.int32)


def _read_index(path: str, filesystem: Any, columns: list[str], keys: pa.Array, owner: np.ndarray, number: int,
                rows: _Rows, batch_rows: int = 1 << 16) -> int:
    """Add the entries of index file ``path`` whose part is listed (``keys``) and not owned by a newer index
    file; mark the parts it covers as its own. Returns the rows dropped as stale.

    When every file it covers is listed unchanged (the usual case), only the footer and the ``pair``
    column are read, ``batch_rows`` at a time and kept as those chunks (no string buffer is grown or
    copied whole); ``part`` and ``model`` are read when rows must be dropped or for a fold.
    """
    # The footer lists every covered file (about 85 bytes each): above Arrow's 100 MB default at 1.2M files.
    handle = pq.ParquetFile(path, filesystem=filesystem, thrift_string_size_limit=2**30)
    meta = handle.metadata.metadata or {}
    if _PARTS_KEY not in meta or _MODELS_KEY not in meta:
        raise ValueError(f"index file {path} lacks its list of scores files")
    covered = meta[_PARTS_KEY].decode()
    covered_keys = pa.array(covered.split("\n") if covered else [], pa.string())
    positions = pc.index_in(covered_keys, value_set=keys).fill_null(-1).to_numpy(zero_copy_only=False)
    positions = positions.astype(np.int64)
    listed = positions >= 0
    usable = listed.copy()
    usable[listed] = (owner[positions[listed]] == -1) | (owner[positions[listed]] == number)
    owner[positions[usable]] = number
    everything = bool(usable.all())
    need_codes = not everything or "part" in columns
    stale = 0
    for group in range(handle.metadata.num_row_groups):
        keep = None
        if need_codes:  # an int32 per row (and the model's), read whole
            size = max(1, handle.metadata.row_group(group).num_rows)
            codes = next(handle.iter_batches(batch_size=size, row_groups=[group], columns=["part", "model"],
                                             use_threads=False))
            part = codes.column("part").to_numpy()
            keep = usable[part]
            stale += int((~listed[part]).sum())
            if "part" in columns:
                rows.parts.append(positions[part][keep].astype(np.int32))
            model = codes.column("model")
            if "model" in columns and not everything:  # the distinct models of the kept rows
                rows.models.append(model.dictionary.take(pa.array(np.unique(model.indices.to_numpy()[keep]),
                                                                  pa.int64())))
            if "part" in columns:  # a fold rewrites every row's model
                rows.row_models.append(rows.model_ids(model.dictionary.to_pylist())[model.indices.to_numpy()[keep]])
            del codes, part, model
        if "pair" in columns:
            start = 0
            for batch in handle.iter_batches(batch_size=batch_rows, row_groups=[group], columns=["pair"],
                                             use_threads=False):
                pairs = batch.column(0)
                if not everything:
                    pairs = pairs.filter(pa.array(keep[start:start + len(pairs)]))
                start += batch.num_rows
                rows.pairs.append(pairs)
    if "model" in columns and everything:
        rows.models.append(pa.array(json.loads(meta[_MODELS_KEY]), pa.string()))
    return stale


def _read_parts(parts: Sequence[tuple[int, PartFile]], filesystem: Any, columns: list[str], threads: int,
                rows: _Rows) -> None:
    """Add the rows of scores files no index covers (their key columns; the partition values from the path)."""
    wanted = (["video_id", "exp_id"] if "pair" in columns else []) + (["model"] if "model" in columns else [])

    def read(item: tuple[int, PartFile]) -> tuple[int, pa.Table, PartFile]:
        position, part = item
        if 0 <= part.size <= _WHOLE_FILE_BYTES:  # a fresh part: one GET on S3 instead of footer + column chunks
            with filesystem.open_input_file(part.path) as handle:
                file = pq.ParquetFile(pa.BufferReader(handle.read()))
        else:
            file = pq.ParquetFile(part.path, filesystem=filesystem)
        return position, file.read(columns=wanted), part

    window = 8 * max(1, threads)  # files read ahead of the one consumed: bounds the tables held at once
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for start in range(0, len(parts), window):
            for position, table, part in pool.map(read, parts[start:start + window]):
                if "pair" in columns:
                    rows.pairs.append(pair_strings(part.dataset, part.split, table["video_id"], table["exp_id"]
                                                   ).combine_chunks())
                if "model" in columns:
                    model = pc.unique(table["model"]).cast(pa.string())
                    rows.models.append(model)
                    if "part" in columns:  # one model per file, as infer writes them: no string per row
                        codes = (np.full(table.num_rows, rows.model_ids(model.to_pylist())[0], np.int32)
                                 if len(model) == 1 else rows.model_ids(table["model"].to_pylist()))
                        rows.row_models.append(codes)
                if "part" in columns:
                    rows.parts.append(np.full(table.num_rows, position, dtype=np.int32))


def _concat(chunks: list[pa.Array], type_: pa.DataType) -> pa.Array:
    return pa.chunked_array(chunks, type_).combine_chunks() if chunks else pa.array([], type_)


def read_committed(
    output: str,
    *,
    pairs: bool = True,
    models: bool = False,
    fold: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    threads: int = 16,
) -> Committed:
    """The committed pairs (and/or models) of ``output``: the index's valid entries plus the parts it misses.

    Args:
        pairs: return the pair strings.
        models: return the models of the committed rows.
        fold: write what was read as one new index file when it differs from the index (parts read
            directly, stale entries, or several index files), then delete the old index files. Run it
            under the output lock (``infer`` and ``jobs.compact`` do).
        threads: parts read at once (the latency of object stores overlaps).
    """
    columns = ["pair", "part", "model"] if fold else ["pair"] * pairs + ["model"] * models
    fs, _ = filesystem_for(output, storage_options)
    filesystem = arrow_filesystem(fs)
    listing = list_parts(output, "scores", storage_options=storage_options)
    keys = pa.array([p.key for p in listing], pa.string())
    owner = np.full(len(listing), -1, dtype=np.int64)
    folder = filesystem_for(join_uri(output, INDEX_FOLDER), storage_options)[1]
    index_files = _index_files(fs, folder)
    rows = _Rows()
    stale = 0
    for number, path in enumerate(index_files):
        before = {name: len(getattr(rows, name)) for name in ("pairs", "parts", "models", "row_models")}
        owned = owner.copy()
        try:
            stale += _read_index(path, filesystem, columns, keys, owner, number, rows)
        except (OSError, ValueError, pa.ArrowException) as exc:  # the index is a cache: read its parts instead
            _LOG.warning("pair index file %s is unreadable (%s): its scores files are read directly%s", path, exc,
                         " and it is replaced" if fold else "")
            for name, length in before.items():
                del getattr(rows, name)[length:]
            owner[:] = owned
    uncovered = [(i, p) for i, p in enumerate(listing) if owner[i] == -1]
    from_index = len(rows.pairs)
    _read_parts(uncovered, filesystem, columns, threads, rows)
    new_rows = sum(len(r) for r in rows.pairs[from_index:])
    result = Committed(pairs=None, models=None, parts=len(listing), parts_read=len(uncovered),
                       index_files=len(index_files), stale_rows=stale)
    # The index's chunks as they were read (sorted, for one complete index file), the parts' rows as one chunk.
    chunks = rows.pairs[:from_index] + ([pa.concat_arrays(rows.pairs[from_index:])] if new_rows else [])
    pair_array = pa.chunked_array(chunks, pa.string())
    rows.pairs.clear()
    del chunks
    changed = bool(new_rows or stale or len(index_files) > 1)
    result.sorted = not changed and len(index_files) == 1  # each index file is written sorted
    if fold and changed:
        order = pc.sort_indices(pair_array)
        part_ids = pa.array(np.concatenate(rows.parts) if rows.parts else np.zeros(0, np.int32))
        model_ids = pa.array(np.concatenate(rows.row_models) if rows.row_models else np.zeros(0, np.int32))
        rows.parts.clear()
        rows.row_models.clear()
        pair_array = pair_array.take(order)
        result.sorted = True
        try:
            _write_index(fs, folder, pa.table({
                "pair": pair_array,
                "part": part_ids.take(order),
                "model": pa.DictionaryArray.from_arrays(model_ids.take(order), pa.array(list(rows.model_names),
                                                                                        pa.string())),
            }, schema=_SCHEMA), keys, index_files)
            result.folded = True
        except Exception:  # noqa: BLE001 - the index is a cache: what was read stands, the next fold tries again
            _LOG.exception("could not write the pair index of %s", output)
    if pairs:
        result.pairs = pair_array
    if models:
        result.models = sorted(set(pc.unique(_concat(rows.models, pa.string())).to_pylist()) - {None})
    return result


def _write_index(fs: Any, folder: str, table: pa.Table, keys: pa.Array, replaces: list[str]) -> None:
    """Write ``table`` (covering the scores files ``keys``) as a new index file, atomically, then delete the
    files it replaces."""
    import io

    name = f"{_PREFIX}{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}{_SUFFIX}"
    sink = io.BytesIO()
    model = table["model"].combine_chunks()
    models = sorted(set(model.dictionary.take(pc.unique(model.indices)).to_pylist()))  # those of some row
    # One row group; sorted pairs share long prefixes (DELTA_BYTE_ARRAY: a tenth of the bytes, quick to decode).
    with pq.ParquetWriter(sink, _SCHEMA, compression="zstd", use_dictionary=["model"],
                          column_encoding={"pair": "DELTA_BYTE_ARRAY", "part": "PLAIN"}) as writer:
        writer.write_table(table, row_group_size=max(1, table.num_rows))
        # In the footer only (not in the stored Arrow schema, which would hold them a second time).
        writer.add_key_value_metadata({_PARTS_KEY: "\n".join(keys.to_pylist()), _MODELS_KEY: json.dumps(models)})
    write_bytes_atomic(fs, f"{folder}/{name}", sink.getvalue())
    for path in replaces:
        try:
            fs.rm(path)
        except FileNotFoundError:
            pass
    _LOG.info("pair index %s: %d committed rows of %d scores files", name, table.num_rows, len(keys))


def fold_index(output: str, *, storage_options: Mapping[str, Any] | None = None) -> Committed:
    """Bring ``output``'s index up to date with its scores table (see :func:`read_committed`); no pairs returned."""
    return read_committed(output, pairs=False, fold=True, storage_options=storage_options)
