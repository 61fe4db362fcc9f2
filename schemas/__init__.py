"""Arrow schemas of every vrshq table (stored, and passed between pipeline stages), and their validation. Imports
only pyarrow."""
from schemas._validate import SchemaValidationError, empty_table, schema_version, validate_table
from schemas.tables import (
    ERRORS_SCHEMA,
    EXPRESSION_TYPES,
    MANIFEST_SCHEMA,
    MASKS_SCHEMA,
    PARTITION_COLUMNS,
    SCORES_SCHEMA,
)
from schemas.stages import SEGMENT_RESULT_SCHEMA, VIDEO_SCORES_SCHEMA, WRITE_SUMMARY_SCHEMA

__all__ = [
    "ERRORS_SCHEMA",
    "EXPRESSION_TYPES",
    "MANIFEST_SCHEMA",
    "MASKS_SCHEMA",
    "PARTITION_COLUMNS",
    "SCORES_SCHEMA",
    "SEGMENT_RESULT_SCHEMA",
    "SchemaValidationError",
    "VIDEO_SCORES_SCHEMA",
    "WRITE_SUMMARY_SCHEMA",
    "empty_table",
    "schema_version",
    "validate_table",
]
