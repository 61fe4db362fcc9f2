"""Compaction of an output's small Parquet parts into large sorted files, atomically per partition.

``infer`` writes one part per batch of videos in each of masks, scores and errors, so a large
collection leaves hundreds of thousands of small files, and every reader lists and opens them all.
:func:`compact_partition` rewrites one ``dataset=<d>/split=<s>`` partition of all three tables:

* rows sorted by (video_id, exp_id, frame_index) (scores and errors: (video_id, exp_id)), in row
  groups of ``row_group_rows`` rows with min/max statistics and a page index, and the sort order in
  the footer, so DuckDB, Spark and ``pyarrow.dataset`` skip every row group whose video range
  misses the one asked for;
* only committed rows: a masks part whose batch has no scores part (an interrupted ``infer`` batch)
  is left as it is, for ``infer``'s orphan cleanup;
* files of about ``target_bytes`` each, named ``part-compact-<generation>-<n>.parquet`` (a batch id
  that :func:`pipelines.inference.resume.remove_orphans` knows is committed);
* the sort runs in DuckDB over a stream of Arrow batches, spilling to disk: memory stays bounded
  whatever the partition's size.

Protocol (one journal per partition, ``<out>/_compact/dataset=<d>/split=<s>/journal.json``)::

    1. journal {state: planned, sources}                        a kill here: rolled back
    2. write the new files under _compact/.../staging/          (staging is outside every table)
    3. check rows written == rows in the sources (footers)
    4. journal {state: committed, sources, targets}             the commit point
    5. move the staged files into the tables, then delete the    a kill here: rolled forward
       sources (masks, errors, then scores, so a masks part
       never outlives its batch's scores part), drop the journal

The pair index (:mod:`pipelines.io.pair_index`) keys its entries on the scores files, so the entries
of the sources drop out by themselves once they are deleted; :func:`compact_output` folds the
compacted files into it at the end.

:func:`finish_compaction` (run by ``jobs.compact`` and by ``infer`` under the output lock before
anything else) rolls every committed journal forward and every planned one back, so a rerun after a
kill finishes the work and no row is ever lost or duplicated. Readers that do not take the lock
(an analyst's DuckDB) can see a partition's rows twice while step 5 runs, never missing.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipelines.io.pair_index import fold_index
from pipelines.io.storage import arrow_filesystem, filesystem_for, join_uri, write_bytes_atomic
from pipelines.io.writers import OUTPUT_SCHEMAS, PartFile, list_parts, part_uri
from schemas import PARTITION_COLUMNS

__all__ = [
    "COMPACT_PREFIX",
    "CompactionResult",
    "compact_output",
    "compact_partition",
    "finish_compaction",
    "is_compacted",
    "SORT_COLUMNS",
]

_LOG = logging.getLogger(__name__)

#: Batch-id prefix of compacted files (``part-compact-<generation>-<n>.parquet``).
COMPACT_PREFIX = "compact-"
#: Batch-id prefix of ``jobs.evaluate``'s files: that job owns and replaces them, compaction leaves them.
_FOREIGN_PREFIXES = ("evaluate-",)
#: Row order of each table inside a compacted partition.
SORT_COLUMNS: dict[str, tuple[str, ...]] = {
    "masks": ("video_id", "exp_id", "frame_index"),
    "scores": ("video_id", "exp_id"),
    "errors": ("video_id", "exp_id"),
}
#: Deletion order of the sources (scores last: a masks part never outlives its batch's scores part).
_DELETE_ORDER = ("masks", "errors", "scores")
_JOURNAL = "journal.json"

#: Test-only fault hook: when set to N, the process SIGKILLs itself at the N-th step of a compaction
#: (a file written, the journal written, a file moved or deleted), the way a lost node or OOM kill does.
CHAOS_KILL_STEP_ENV = "VRSHQ_CHAOS_COMPACT_KILL_STEP"


def is_compacted(part: PartFile) -> bool:
    """Whether ``part`` was written by compaction (hence holds committed rows only)."""
    return part.batch_id.startswith(COMPACT_PREFIX)


@dataclass
class CompactionResult:
    """What one partition's compaction did."""

    dataset: str
    split: str
    files_before: dict[str, int] = field(default_factory=dict)
    files_after: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    bytes_written: int = 0
    seconds: float = 0.0
    skipped: bool = False


class _Steps:
    """Counts mutation steps; kills the process at the step named by :data:`CHAOS_KILL_STEP_ENV`."""

    def __init__(self) -> None:
        value = os.environ.get(CHAOS_KILL_STEP_ENV)
        self._kill_at = int(value) if value else None
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        if self._kill_at is not None and self.count >= self._kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


def _partition_dir(output: str, dataset: str, split: str) -> str:
    return join_uri(output, "_compact", f"dataset={dataset}", f"split={split}")


def _read_journal(fs: Any, path: str) -> dict[str, Any] | None:
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None


def _write_journal(fs: Any, path: str, journal: dict[str, Any], steps: _Steps) -> None:
    write_bytes_atomic(fs, path, json.dumps(journal, indent=1).encode())
    steps()


def _sources(output: str, dataset: str, split: str, *, target_bytes: int,
             storage_options: Mapping[str, Any] | None) -> dict[str, list[PartFile]]:
    """Every part of the partition to rewrite, per table: all fresh parts of all three tables (a batch's
    masks and scores always go together) and the compacted files below half the target size."""
    fs, _ = filesystem_for(output, storage_options)
    parts = {table: [p for p in list_parts(output, table, storage_options=storage_options)
                     if p.dataset == dataset and p.split == split and not p.batch_id.startswith(_FOREIGN_PREFIXES)]
             for table in OUTPUT_SCHEMAS}
    committed = {p.batch_id for p in parts["scores"]}
    # A masks part whose batch has no scores part is uncommitted (an interrupted infer batch): left alone,
    # for infer's orphan cleanup; compacting it would make its pairs look done to no one and duplicate them later.
    parts["masks"] = [p for p in parts["masks"] if is_compacted(p) or p.batch_id in committed]
    return {table: [p for p in found if not is_compacted(p) or fs.size(p.path) < target_bytes // 2]
            for table, found in parts.items()}


def _file_schema(table: str) -> pa.Schema:
    """What a part file holds: every column but the partition ones, and the schema's version metadata."""
    schema = OUTPUT_SCHEMAS[table]
    return pa.schema([f for f in schema if f.name not in PARTITION_COLUMNS], metadata=schema.metadata)


def _source_rows(fs: Any, paths: list[str]) -> int:
    filesystem = arrow_filesystem(fs)
    return sum(pq.ParquetFile(path, filesystem=filesystem).metadata.num_rows for path in paths)


def _sorted_batches(fs: Any, paths: list[str], table: str, spill_dir: str,
                    batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The rows of ``paths`` sorted by :data:`SORT_COLUMNS`, streamed (DuckDB spills to ``spill_dir``)."""
    import duckdb

    schema = _file_schema(table)
    dataset = pads.dataset(paths, schema=schema, format="parquet", filesystem=arrow_filesystem(fs))
    con = duckdb.connect()
    try:
        con.execute(f"SET temp_directory = '{spill_dir}'")
        con.execute("SET memory_limit = '1GB'")
        con.execute("SET preserve_insertion_order = false")
        # A stream of batches, not the dataset itself: see pipelines.evaluation.scoring.iter_video_masks.
        con.register("parts", pa.RecordBatchReader.from_batches(schema, dataset.to_batches(batch_size=batch_rows)))
        order = ", ".join(f"{c} NULLS FIRST" for c in SORT_COLUMNS[table])
        relation = con.sql(f"SELECT * FROM parts ORDER BY {order}")
        reader = (relation.to_arrow_reader(batch_rows) if hasattr(relation, "to_arrow_reader")
                  else relation.fetch_record_batch(batch_rows))
        for batch in reader:
            if batch.num_rows:
                yield pa.Table.from_batches([batch]).cast(schema).to_batches()[0] if batch.schema != schema else batch
    finally:
        con.close()


class _RollingWriter:
    """Writes sorted batches into staged files of about ``target_bytes``, ``row_group_rows`` rows per group."""

    def __init__(self, fs: Any, folder: str, table: str, generation: str, *, target_bytes: int,
                 row_group_rows: int, steps: _Steps):
        self._fs, self._folder, self._table = fs, folder, table
        self._generation, self._target, self._group_rows = generation, target_bytes, row_group_rows
        self._steps = steps
        self._schema = _file_schema(table)
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._handle: Any = None
        self._writer: pq.ParquetWriter | None = None
        self.names: list[str] = []
        self.rows = 0
        self.bytes = 0

    def _open(self) -> None:
        batch_id = f"{COMPACT_PREFIX}{self._generation}-{len(self.names):05d}"
        name = f"part-{batch_id}.parquet"
        self.names.append(name)
        self._handle = self._fs.open(f"{self._folder}/{name}", "wb")
        sorting = pq.SortingColumn.from_ordering(self._schema, [(c, "ascending") for c in SORT_COLUMNS[self._table]],
                                                 null_placement="at_start")
        self._writer = pq.ParquetWriter(self._handle, self._schema, compression="zstd", write_statistics=True,
                                        write_page_index=True, sorting_columns=sorting)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self.bytes += self._handle.tell()
            self._handle.close()
            self._writer = self._handle = None
            self._steps()

    def _flush_group(self) -> None:
        if not self._pending_rows:
            return
        if self._writer is None:
            self._open()
        table = pa.Table.from_batches(self._pending, schema=self._schema)
        self._writer.write_table(table, row_group_size=max(self._group_rows, table.num_rows))
        self.rows += table.num_rows
        self._pending, self._pending_rows = [], 0
        if self._handle.tell() >= self._target:
            self._close()

    def write(self, batch: pa.RecordBatch) -> None:
        while batch.num_rows:
            take = min(batch.num_rows, self._group_rows - self._pending_rows)
            self._pending.append(batch.slice(0, take))
            self._pending_rows += take
            batch = batch.slice(take)
            if self._pending_rows >= self._group_rows:
                self._flush_group()

    def finish(self) -> None:
        self._flush_group()
        self._close()


def _roll_forward(output: str, journal_path: str, journal: dict[str, Any], fs: Any, steps: _Steps,
                  storage_options: Mapping[str, Any] | None) -> None:
    """Steps 5 of the protocol; idempotent (each move and delete checks what is already done)."""
    dataset, split = journal["dataset"], journal["split"]
    staging = journal["staging"]
    for table, names in journal["targets"].items():
        for name in names:
            staged = f"{staging}/{table}/{name}"
            final = filesystem_for(part_uri(output, table, dataset=dataset, split=split,
                                            batch_id=name[len("part-"):-len(".parquet")]), storage_options)[1]
            if fs.exists(staged):
                fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
                fs.mv(staged, final)
                steps()
            elif not fs.exists(final):
                raise RuntimeError(f"compaction journal {journal_path}: {name} of {table} is neither staged nor in "
                                   "place; the output was changed outside jobs.compact")
    for table in _DELETE_ORDER:
        for path in journal["sources"].get(table, []):
            if fs.exists(path):
                fs.rm(path)
                steps()
    _drop_journal(fs, journal_path, staging, steps)


def _drop_journal(fs: Any, journal_path: str, staging: str, steps: _Steps) -> None:
    if fs.exists(staging):
        fs.rm(staging, recursive=True)
    if fs.exists(journal_path):
        fs.rm(journal_path)
        steps()
    folder = journal_path.rsplit("/", 1)[0]  # the partition's folder under _compact/: nothing else is left in it
    if fs.exists(folder):
        fs.rm(folder, recursive=True)


def finish_compaction(output: str, *, storage_options: Mapping[str, Any] | None = None,
                      _steps: _Steps | None = None) -> int:
    """Roll interrupted compactions of ``output`` forward (committed) or back (not committed).

    Must run under the output lock. Returns how many were rolled forward.
    """
    steps = _steps or _Steps()
    fs, root = filesystem_for(join_uri(output, "_compact"), storage_options)
    if not fs.exists(root):
        return 0
    finished = 0
    for path in sorted(p for p in fs.find(root) if p.endswith(f"/{_JOURNAL}")):
        journal = _read_journal(fs, path)
        if journal is None:
            continue
        if journal.get("state") == "committed":
            _LOG.warning("finishing the committed compaction %s of %s/%s", journal["generation"],
                         journal["dataset"], journal["split"])
            _roll_forward(output, path, journal, fs, steps, storage_options)
            finished += 1
        else:
            _LOG.warning("rolling back the uncommitted compaction %s of %s/%s", journal.get("generation"),
                         journal.get("dataset"), journal.get("split"))
            _drop_journal(fs, path, journal.get("staging") or path.rsplit("/", 1)[0] + "/staging", steps)
    return finished


def compact_partition(
    output: str,
    dataset: str,
    split: str,
    *,
    target_bytes: int = 256 * 2**20,
    row_group_rows: int = 65_536,
    storage_options: Mapping[str, Any] | None = None,
    _steps: _Steps | None = None,
) -> CompactionResult:
    """Rewrite one partition of masks, scores and errors (see the module docstring).

    The caller holds the output lock and has run :func:`finish_compaction`.

    Raises:
        RuntimeError: when the rows written differ from the rows read (nothing is committed then).
    """
    steps = _steps or _Steps()
    started = time.perf_counter()
    result = CompactionResult(dataset=dataset, split=split)
    fs, _ = filesystem_for(output, storage_options)
    sources = _sources(output, dataset, split, target_bytes=target_bytes, storage_options=storage_options)
    result.files_before = {t: len(p) for t, p in sources.items()}
    if all(len(p) <= 1 and all(is_compacted(x) for x in p) for p in sources.values()):
        result.skipped = True
        return result
    folder = _partition_dir(output, dataset, split)
    journal_path = filesystem_for(join_uri(folder, _JOURNAL), storage_options)[1]
    generation = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
    staging = filesystem_for(join_uri(folder, "staging", generation), storage_options)[1]
    journal: dict[str, Any] = {
        "state": "planned", "generation": generation, "dataset": dataset, "split": split, "staging": staging,
        "sources": {t: [p.path for p in parts] for t, parts in sources.items()}, "targets": {},
    }
    _write_journal(fs, journal_path, journal, steps)
    with tempfile.TemporaryDirectory(prefix="vrshq-compact-") as spill:
        for table, parts in sources.items():
            if not parts:
                continue
            paths = [p.path for p in parts]
            expected = _source_rows(fs, paths)
            fs.makedirs(f"{staging}/{table}", exist_ok=True)
            writer = _RollingWriter(fs, f"{staging}/{table}", table, generation, target_bytes=target_bytes,
                                    row_group_rows=row_group_rows, steps=steps)
            for batch in _sorted_batches(fs, paths, table, spill, batch_rows=min(row_group_rows, 65_536)):
                writer.write(batch)
            writer.finish()
            if writer.rows != expected:
                raise RuntimeError(f"compacting {table} of {dataset}/{split}: wrote {writer.rows} rows, the "
                                   f"{len(paths)} source file(s) hold {expected}; nothing was committed")
            journal["targets"][table] = writer.names
            result.rows[table] = writer.rows
            result.bytes_written += writer.bytes
    journal["state"] = "committed"
    _write_journal(fs, journal_path, journal, steps)
    _roll_forward(output, journal_path, journal, fs, steps, storage_options)
    after = {t: [p for p in list_parts(output, t, storage_options=storage_options)
                 if p.dataset == dataset and p.split == split] for t in OUTPUT_SCHEMAS}
    result.files_after = {t: len(p) for t, p in after.items()}
    result.seconds = time.perf_counter() - started
    return result


def partitions(output: str, *, storage_options: Mapping[str, Any] | None = None) -> list[tuple[str, str]]:
    """The (dataset, split) partitions that any table of ``output`` holds."""
    found = set()
    for table in OUTPUT_SCHEMAS:
        found.update((p.dataset, p.split) for p in list_parts(output, table, storage_options=storage_options))
    return sorted(found)


def compact_output(
    output: str,
    *,
    target_bytes: int = 256 * 2**20,
    row_group_rows: int = 65_536,
    only: Callable[[str, str], bool] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[CompactionResult]:
    """Finish interrupted compactions, then compact every partition (``only(dataset, split)`` filters).

    The caller holds the output lock.
    """
    say = log or _LOG.info
    steps = _Steps()  # one count for the whole job (the test-only kill hook counts across partitions)
    finished = finish_compaction(output, storage_options=storage_options, _steps=steps)
    if finished:
        say(f"finished {finished} interrupted compaction(s)")
    results = []
    for dataset, split in partitions(output, storage_options=storage_options):
        if only is not None and not only(dataset, split):
            continue
        result = compact_partition(output, dataset, split, target_bytes=target_bytes, row_group_rows=row_group_rows,
                                   storage_options=storage_options, _steps=steps)
        results.append(result)
        if result.skipped:
            say(f"{dataset}/{split}: already compact")
        else:
            say(f"{dataset}/{split}: files {result.files_before} -> {result.files_after}, rows {result.rows}, "
                f"{result.bytes_written / 2**20:.1f} MiB in {result.seconds:.1f} s")
    # The sources' index entries are stale now and the new files uncovered: fold, so infer's next resume
    # reads the index alone (without this it would read the compacted scores files and fold then).
    try:
        folded = fold_index(output, storage_options=storage_options)
    except Exception:  # noqa: BLE001 - the index is a cache: the compaction stands, the next resume folds
        _LOG.exception("could not fold the compacted scores files into the pair index")
    else:
        if folded.folded:
            say(f"pair index: {folded.parts} scores file(s) covered, {folded.parts_read} read for it")
    return results
