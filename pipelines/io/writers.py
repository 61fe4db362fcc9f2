"""The masks / scores / errors Parquet datasets under an output URI.

Layout (hive partitioning, readable by DuckDB, pandas, Spark and ``pyarrow.dataset``)::

    <output>/masks/dataset=<d>/split=<s>/part-<batch_id>.parquet
    <output>/scores/dataset=<d>/split=<s>/part-<batch_id>.parquet
    <output>/errors/dataset=<d>/split=<s>/part-<batch_id>.parquet

The partition columns live in the folder names only (as Spark and Ray write them); readers put
them back. Video and expression ids are data: they never become paths, so ids with ``/`` or
``..`` cannot write outside the output root; the partition values and file names that do become
paths go through :func:`vrshq.data.paths.contained_uri`.

Atomicity. One call of :func:`write_batch` writes the rows of one batch of videos:

1. every table is validated against its schema first, so a bad row writes nothing;
2. each file becomes visible whole or not at all: on local disk it is written under a hidden
   ``.``-name (which dataset readers skip) and renamed; on object stores a PUT is atomic;
3. ``scores`` is written last and is the batch's commit record. A (video, expression) pair is
   *done* when it has a scores row; a masks file whose batch has no scores file is an orphan of a
   crash, which :func:`pipelines.inference.resume.remove_orphans` deletes before a rerun writes the pair again;
4. the batch id is a hash of the run id and the batch's keys, so a retried Ray task overwrites its
   own files instead of adding duplicates.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from schemas import ERRORS_SCHEMA, MASKS_SCHEMA, PARTITION_COLUMNS, SCORES_SCHEMA, validate_table
from pipelines.io.storage import arrow_filesystem, filesystem_for, is_local, join_uri, write_bytes_atomic
from vrshq.data.paths import contained_uri

__all__ = [
    "OUTPUT_SCHEMAS",
    "WRITE_ORDER",
    "PartFile",
    "batch_id_for",
    "list_parts",
    "part_uri",
    "read_output",
    "write_batch",
]

#: Output table name -> schema.
OUTPUT_SCHEMAS: dict[str, pa.Schema] = {"masks": MASKS_SCHEMA, "scores": SCORES_SCHEMA, "errors": ERRORS_SCHEMA}

#: Order of writes inside a batch; ``scores`` last: it commits the batch (see module docstring).
WRITE_ORDER: tuple[str, ...] = ("masks", "errors", "scores")

_PART_NAME = re.compile(r"^part-(?P<batch>[A-Za-z0-9_-]+)\.parquet$")
_PARTITION_SCHEMA = pa.schema([pa.field(name, pa.string()) for name in PARTITION_COLUMNS])


@dataclass(frozen=True, slots=True)
class PartFile:
    """One Parquet file of an output table (slots: an output lists hundreds of thousands of them)."""

    table: str
    dataset: str
    split: str
    batch_id: str
    path: str  # path inside the filesystem (no protocol)
    size: int = -1  # bytes, from the listing
    version: str = ""  # what changes when the file is rewritten: the ETag on object stores, else the mtime

    @property
    def key(self) -> str:
        """``dataset=<d>/split=<s>/part-<b>.parquet<US><size><US><version>``: names this file's current contents
        (:mod:`pipelines.io.pair_index` keys its entries on it, so a rewritten or removed file drops them)."""
        name = f"dataset={self.dataset}/split={self.split}/part-{self.batch_id}.parquet"
        return f"{name}\x1f{self.size}\x1f{self.version}"


def batch_id_for(run_id: str, keys: Iterable[tuple[str, ...]]) -> str:
    """A deterministic batch id: the same run and keys give the same files (idempotent retries)."""
    digest = hashlib.sha1(run_id.encode())
    for key in sorted(set(keys)):
        digest.update(b"\x1f".join(part.encode() for part in key) + b"\x1e")
    return digest.hexdigest()[:20]


def part_uri(output: str, table: str, *, dataset: str, split: str, batch_id: str) -> str:
    """``<output>/<table>/dataset=<d>/split=<s>/part-<batch_id>.parquet``."""
    # dataset and split are data: contained_uri keeps them (and the batch id) under <output>/<table>/
    return contained_uri(join_uri(output, table), f"dataset={dataset}", f"split={split}", f"part-{batch_id}.parquet",
                         what="partition value or batch id")


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def write_batch(
    output: str,
    tables: Mapping[str, pa.Table],
    *,
    batch_id: str,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, int]:
    """Validate and write one batch of output rows, atomically per file, scores last.

    Args:
        output: the output URI.
        tables: table name (``masks``, ``scores``, ``errors``) -> rows; absent or empty tables
            write no file.
        batch_id: names the files (see :func:`batch_id_for`); must be a safe file-name token.
        storage_options: fsspec options of ``output``.

    Returns:
        Rows written per table name.

    Raises:
        schemas.SchemaValidationError: when a table does not match its schema (nothing is written).
        ValueError: on an unknown table name, a bad batch id or an unsafe partition value.
    """
    unknown = sorted(set(tables) - set(OUTPUT_SCHEMAS))
    if unknown:
        raise ValueError(f"write_batch got unknown table(s) {unknown}; known: {sorted(OUTPUT_SCHEMAS)}")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", batch_id):
        raise ValueError(f"batch_id {batch_id!r} must be 1-64 characters of [A-Za-z0-9_-]")
    from pipelines.inference.config import is_safe_partition_value

    validated = {
        name: validate_table(table, OUTPUT_SCHEMAS[name], what=f"{name} rows for {output}")
        for name, table in tables.items()
        if table is not None
    }
    fs, _ = filesystem_for(output, storage_options)
    written = {name: 0 for name in OUTPUT_SCHEMAS}
    for name in WRITE_ORDER:
        table = validated.get(name)
        if table is None or table.num_rows == 0:
            continue
        partitions = table.group_by(list(PARTITION_COLUMNS)).aggregate([]).to_pylist()
        for part in sorted(partitions, key=lambda p: (p["dataset"], p["split"])):
            dataset, split = part["dataset"], part["split"]
            for value in (dataset, split):
                if not is_safe_partition_value(value):
                    raise ValueError(f"partition value {value!r} of {name} rows is not a safe folder name")
            mask = pc.and_(pc.equal(table["dataset"], dataset), pc.equal(table["split"], split))
            rows = table.filter(mask).drop_columns(list(PARTITION_COLUMNS))
            uri = part_uri(output, name, dataset=dataset, split=split, batch_id=batch_id)
            write_bytes_atomic(fs, filesystem_for(uri, storage_options)[1], _parquet_bytes(rows))
            written[name] += rows.num_rows
    return written


def _find(fs: Any, root: str) -> dict[str, dict[str, Any]]:
    """Every file under ``root`` with its size and version fields: ``fs.find`` (one LIST per 1,000 keys on
    S3, sizes and ETags included); on the local disk a walk with ``os.scandir``, which costs a fraction of
    fsspec's per-file ``info`` dicts when an output holds tens of thousands of parts."""
    if not is_local(fs):
        return fs.find(root, detail=True)
    found: dict[str, dict[str, Any]] = {}
    folders = [root]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    stat = entry.stat(follow_symlinks=False)
                    found[entry.path] = {"size": stat.st_size, "mtime": stat.st_mtime}  # as fsspec's info
    return found


#: The listing fields that change when a file is rewritten, by filesystem (S3, GCS/Azure, local disk, others).
_VERSION_FIELDS = ("ETag", "etag", "generation", "mtime", "LastModified", "last_modified", "updated", "created")


def _version(info: Mapping[str, Any]) -> str:
    return next((str(info[k]) for k in _VERSION_FIELDS if info.get(k)), "")


def list_parts(output: str, table: str, *, storage_options: Mapping[str, Any] | None = None) -> list[PartFile]:
    """Every committed-looking Parquet file of ``table`` (hidden temporary files are skipped)."""
    if table not in OUTPUT_SCHEMAS:
        raise ValueError(f"unknown output table {table!r}; known: {sorted(OUTPUT_SCHEMAS)}")
    fs, root = filesystem_for(join_uri(output, table), storage_options)
    if not fs.exists(root):
        return []
    parts = []
    found = _find(fs, root)
    for path in sorted(found):
        info = found[path]
        relative = path[len(root):].strip("/").split("/")
        if len(relative) != 3 or not relative[0].startswith("dataset=") or not relative[1].startswith("split="):
            continue
        match = _PART_NAME.match(relative[2])
        if match is None:
            continue
        parts.append(
            PartFile(
                table=table,
                dataset=relative[0][len("dataset="):],
                split=relative[1][len("split="):],
                batch_id=match["batch"],
                path=path,
                size=int(info.get("size") or 0),
                version=_version(info),
            )
        )
    return parts


def read_output(
    output: str,
    table: str,
    *,
    columns: list[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> pa.Table:
    """Read an output table back with its partition columns, in schema column order.

    Meant for resume bookkeeping (key columns only) and tests; analysts read the folders with
    DuckDB (``read_parquet('<output>/scores/**/*.parquet', hive_partitioning=true)``) or pandas.
    Returns an empty table of the schema when nothing was written yet.
    """
    schema = OUTPUT_SCHEMAS.get(table)
    if schema is None:
        raise ValueError(f"unknown output table {table!r}; known: {sorted(OUTPUT_SCHEMAS)}")
    wanted = list(schema.names) if columns is None else list(columns)
    missing = sorted(set(wanted) - set(schema.names))
    if missing:
        raise ValueError(f"columns {missing} are not in the {table} schema")
    parts = list_parts(output, table, storage_options=storage_options)
    if not parts:
        return schema.empty_table().select(wanted)
    fs, _ = filesystem_for(output, storage_options)
    file_schema = pa.schema([f for f in schema if f.name not in PARTITION_COLUMNS])
    dataset = pads.dataset(
        [p.path for p in parts],
        schema=pa.schema([*file_schema, *_PARTITION_SCHEMA]),
        format="parquet",
        filesystem=arrow_filesystem(fs),
        partitioning=pads.partitioning(_PARTITION_SCHEMA, flavor="hive"),
        partition_base_dir=filesystem_for(join_uri(output, table), storage_options)[1],
    )
    result = dataset.to_table(columns=wanted)
    return result.cast(pa.schema([schema.field(name) for name in wanted]))
