"""Validation of tables against the project's Arrow schemas.

Every table that vrshq writes goes through :func:`validate_table` first, so a bug that drops a
column, changes a type or writes a null into a required field fails loudly at the writer instead
of surfacing weeks later in an analyst's query.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["SchemaValidationError", "validate_table", "schema_version", "empty_table"]

SCHEMA_NAME_KEY = b"vrshq.schema"
SCHEMA_VERSION_KEY = b"vrshq.schema_version"


class SchemaValidationError(ValueError):
    """A table does not match the schema it is written as; the message lists every problem."""


def schema_version(schema: pa.Schema) -> str:
    """Return ``name@version`` of a vrshq schema (from its metadata)."""
    meta = schema.metadata or {}
    return f"{meta.get(SCHEMA_NAME_KEY, b'?').decode()}@{meta.get(SCHEMA_VERSION_KEY, b'?').decode()}"


def empty_table(schema: pa.Schema) -> pa.Table:
    """An empty table with exactly ``schema`` (used to write a valid file when there are no rows)."""
    return schema.empty_table()


def validate_table(table: pa.Table, schema: pa.Schema, *, what: str = "table") -> pa.Table:
    """Check ``table`` against ``schema`` and return it cast to the schema (column order included).

    Accepts a table whose columns are a permutation of the schema's, with types that cast safely
    (e.g. int64 -> int32 without overflow, large_string -> string). Rejects missing or extra
    columns, unsafe casts and nulls in non-nullable fields. All problems are reported at once.

    Args:
        table: the table to check.
        schema: one of the ``*_SCHEMA`` constants of :mod:`schemas`.
        what: a label for error messages (e.g. the output URI).

    Raises:
        SchemaValidationError: naming ``what``, the schema version and each bad column.
    """
    problems: list[str] = []
    names = set(table.column_names)
    expected = set(schema.names)
    missing = [n for n in schema.names if n not in names]
    extra = [n for n in table.column_names if n not in expected]
    if missing:
        problems.append(f"missing columns {missing}")
    if extra:
        problems.append(f"unexpected columns {extra}")
    columns = []
    if not missing:
        for field in schema:
            column = table.column(field.name)
            try:
                column = column.cast(field.type, safe=True) if column.type != field.type else column
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                problems.append(f"column {field.name!r} has type {column.type}, expected {field.type}: {exc}")
                continue
            if not field.nullable and column.null_count:
                problems.append(f"column {field.name!r} has {column.null_count} null(s) but is required")
            if pa.types.is_list(field.type) and not field.type.value_field.nullable and column.null_count == 0:
                if len(column) and pc.sum(pc.is_null(pc.list_flatten(column))).as_py():
                    problems.append(f"column {field.name!r} holds null list items")
            columns.append(column)
    if problems:
        raise SchemaValidationError(
            f"{what} does not match schema {schema_version(schema)}: " + "; ".join(problems)
        )
    return pa.Table.from_arrays(columns, schema=schema)
