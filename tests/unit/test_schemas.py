"""The Arrow schemas and their validation: what every writer relies on."""
from __future__ import annotations

import pyarrow as pa
import pytest

import schemas
from schemas import (
    ERRORS_SCHEMA,
    MANIFEST_SCHEMA,
    MASKS_SCHEMA,
    SCORES_SCHEMA,
    SchemaValidationError,
    validate_table,
)

ALL = [MANIFEST_SCHEMA, MASKS_SCHEMA, SCORES_SCHEMA, ERRORS_SCHEMA]


def _mask_row(**overrides):
    row = dict(
        dataset="revos", split="valid", video_id="UVO/all/x", exp_id="0", frame_index=3, frame_name="00003",
        height=4, width=5, rle_counts=b"abc", score=1.5, is_keyframe=False, run_id="r", model="tiny",
        code_version="deadbeef",
    )
    row.update(overrides)
    return row


@pytest.mark.parametrize("schema", ALL, ids=lambda s: schemas.schema_version(s))
def test_every_schema_is_versioned_and_partitionable(schema):
    name, version = schemas.schema_version(schema).split("@")
    assert name in {"manifest", "masks", "scores", "errors"} and version.isdigit()
    for column in schemas.PARTITION_COLUMNS:
        assert not schema.field(column).nullable


def test_validate_casts_safe_types_and_reorders_columns():
    row = _mask_row()
    table = pa.Table.from_pylist([row])  # frame_index inferred as int64, score as double
    table = table.select(list(reversed(table.column_names)))
    out = validate_table(table, MASKS_SCHEMA)
    assert out.schema.equals(MASKS_SCHEMA, check_metadata=True)
    assert out.column("frame_index").type == pa.int32()
    assert out.to_pylist()[0]["video_id"] == "UVO/all/x"


def test_validate_reports_every_problem_at_once():
    table = pa.Table.from_pylist([_mask_row(video_id=None)]).drop(["score"])
    table = table.append_column("bogus", pa.array([1]))
    with pytest.raises(SchemaValidationError) as info:
        validate_table(table, MASKS_SCHEMA, what="s3://b/out/masks")
    message = str(info.value)
    assert "s3://b/out/masks" in message and "masks@1" in message
    assert "missing columns ['score']" in message and "unexpected columns ['bogus']" in message


def test_validate_rejects_nulls_in_required_fields_and_unsafe_casts():
    with pytest.raises(SchemaValidationError, match="'video_id' has 1 null"):
        validate_table(pa.Table.from_pylist([_mask_row(video_id=None)]), MASKS_SCHEMA)
    with pytest.raises(SchemaValidationError, match="frame_index"):
        validate_table(pa.Table.from_pylist([_mask_row(frame_index=2**40)]), MASKS_SCHEMA)


def test_validate_rejects_null_items_inside_required_lists():
    row = dict(
        dataset="d", split="s", video_id="v", video_uri=None, frames_uri="f", frame_names=["a", None],
        height=1, width=1, exp_id="0", expression="x", expression_type="referring", type_id=0,
        obj_ids=[1], anno_ids=[1], annotation_uri=None, foreground_uri=None,
    )
    with pytest.raises(SchemaValidationError, match="frame_names"):
        validate_table(pa.Table.from_pylist([row]), MANIFEST_SCHEMA)
    row["frame_names"] = ["a", "b"]
    assert validate_table(pa.Table.from_pylist([row]), MANIFEST_SCHEMA).num_rows == 1


def test_the_tables_between_pipeline_stages_are_versioned_schemas_the_stages_build_against():
    from pipelines.evaluation.scoring import VideoScores, _rows_table
    from pipelines.inference import result_writer, segment_actor

    stages = {"segment_result": schemas.SEGMENT_RESULT_SCHEMA, "write_summary": schemas.WRITE_SUMMARY_SCHEMA,
              "video_scores": schemas.VIDEO_SCORES_SCHEMA}
    for name, schema in stages.items():
        assert schemas.schema_version(schema) == f"{name}@1"
    assert segment_actor.RESULT_SCHEMA is schemas.SEGMENT_RESULT_SCHEMA
    assert result_writer.SUMMARY_SCHEMA is schemas.WRITE_SUMMARY_SCHEMA
    table = _rows_table("UVO/all/x", VideoScores([{"exp_id": "0", "jf": 0.5}], [{"exp_id": "1"}]), model="tiny")
    assert table.schema.equals(schemas.VIDEO_SCORES_SCHEMA, check_metadata=True)
    assert table.column("kind").to_pylist() == ["score", "error"]
    assert _rows_table("v", VideoScores([], [])).schema.equals(schemas.VIDEO_SCORES_SCHEMA, check_metadata=True)
