"""Reading the hive-partitioned output tables (masks, scores, errors) on any fsspec URI.

Layout: ``<base>/dataset=<d>/split=<s>/<name>.parquet``; the files hold every schema column except
the partition columns (standard hive, what Ray Data's ``write_parquet(partition_cols=...)``,
DuckDB and Spark write). Readers accept files with or without the partition columns inside.
Every table is validated against its schema after it is read. The one writer of these tables is
:func:`pipelines.io.writers.write_batch` (validated, atomic per file).
"""
from __future__ import annotations

import functools
import operator
import posixpath
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.io.storage import filesystem_for, join_uri
from schemas import PARTITION_COLUMNS, validate_table

__all__ = [
    "dataset_files",
    "open_dataset",
    "partition_filter",
    "partition_uri",
    "ray_filesystem",
    "read_table",
    "uri_exists",
]

_PARTITION_SCHEMA = pa.schema([pa.field(c, pa.string()) for c in PARTITION_COLUMNS])


def partition_uri(base: str, dataset: str, split: str) -> str:
    """``<base>/dataset=<dataset>/split=<split>``."""
    return join_uri(base, f"dataset={dataset}", f"split={split}")


def uri_exists(uri: str, *, storage_options: dict[str, Any] | None = None) -> bool:
    fs, path = filesystem_for(uri, storage_options)
    return fs.exists(path)


def ray_filesystem(uri: str, storage_options: dict[str, Any] | None = None) -> pafs.FileSystem | None:
    """A pyarrow filesystem for Ray Data's ``filesystem=`` (None for local paths)."""
    fs, _ = filesystem_for(uri, storage_options)
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def dataset_files(
    base_uri: str,
    *,
    dataset: str | None = None,
    split: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> list[str]:
    """Sorted Parquet file paths under ``base_uri`` (optionally one partition), [] when absent.

    Paths are those of the fsspec filesystem of ``base_uri`` (no protocol for s3: ``bucket/key``).
    """
    fs, path = filesystem_for(base_uri, storage_options)
    if dataset is not None and split is not None:
        path = posixpath.join(path, f"dataset={dataset}", f"split={split}")
    if not fs.exists(path):
        return []
    # Skip hidden and underscore files (in-flight writes, _SUCCESS/_metadata), as dataset readers do.
    return sorted(p for p in fs.find(path)
                  if p.endswith(".parquet") and not p.rsplit("/", 1)[-1].startswith((".", "_")))


def open_dataset(base_uri: str, *, storage_options: dict[str, Any] | None = None) -> pads.Dataset:
    """A pyarrow dataset over ``base_uri`` with the hive partition columns as strings.

    Raises:
        FileNotFoundError: when ``base_uri`` holds no Parquet file.
    """
    fs, path = filesystem_for(base_uri, storage_options)
    files = dataset_files(base_uri, storage_options=storage_options)
    if not files:
        raise FileNotFoundError(f"{base_uri}: no Parquet files found")
    filesystem = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    partitioning = pads.partitioning(_PARTITION_SCHEMA, flavor="hive")
    # Files may or may not hold the partition columns; the hive values from the path win.
    file_schema = pq.read_schema(files[0], filesystem=filesystem)
    names = [n for n in file_schema.names if n not in PARTITION_COLUMNS]
    schema = pa.schema([file_schema.field(n) for n in names] + list(_PARTITION_SCHEMA))
    return pads.dataset(files, filesystem=filesystem, format="parquet", partitioning=partitioning,
                        partition_base_dir=path, schema=schema)


def partition_filter(dataset: str | None, split: str | None) -> pc.Expression | None:
    """The filter that keeps the ``dataset``/``split`` partition (None: every one); pyarrow prunes files by it."""
    conditions = [pc.field(name) == value for name, value in (("dataset", dataset), ("split", split))
                  if value is not None]
    return functools.reduce(operator.and_, conditions) if conditions else None


def read_table(
    base_uri: str,
    schema: pa.Schema,
    *,
    dataset: str | None = None,
    split: str | None = None,
    storage_options: dict[str, Any] | None = None,
    columns: Iterable[str] | None = None,
) -> pa.Table:
    """Read (a partition of) an output dataset and validate it against ``schema``.

    Use only for tables that fit in memory (scores, errors); stream masks with
    :func:`pipelines.evaluation.scoring.iter_video_masks`.
    """
    arrow_dataset = open_dataset(base_uri, storage_options=storage_options)
    table = arrow_dataset.to_table(filter=partition_filter(dataset, split))
    table = validate_table(table, schema, what=base_uri)
    return table.select(list(columns)) if columns is not None else table
