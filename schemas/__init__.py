"""Arrow schemas of every vrshq table, and their validation. Imports only pyarrow."""
from schemas._validate import SchemaValidationError, empty_table, schema_version, validate_table
from schemas.tables import (
    ERRORS_SCHEMA,
    EXPRESSION_TYPES,
    MANIFEST_SCHEMA,
    MASKS_SCHEMA,
    PARTITION_COLUMNS,
    SCORES_SCHEMA,
)

__all__ = [
    "ERRORS_SCHEMA",
    "EXPRESSION_TYPES",
    "MANIFEST_SCHEMA",
    "MASKS_SCHEMA",
    "PARTITION_COLUMNS",
    "SCORES_SCHEMA",
    "SchemaValidationError",
    "empty_table",
    "schema_version",
    "validate_table",
]
