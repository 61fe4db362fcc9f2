"""Records <-> manifest table round trips, Parquet on disk and on S3, and rejected manifests."""
from __future__ import annotations

import dataclasses

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.inference.manifest import (
    ManifestError,
    manifest_to_records,
    read_manifest,
    records_to_manifest,
    write_manifest,
)
from schemas import MANIFEST_SCHEMA, SchemaValidationError
from vrshq.data import ExpressionRecord, VideoRecord, read_revos


def _records(root):
    jpeg = read_revos(str(root), split="valid")
    mp4 = read_revos(str(root), split="valid", frames_from="mp4", dataset="revos_mp4")
    return jpeg + mp4[:1]


def test_records_to_manifest_rows(synthetic_revos_local):
    records = _records(synthetic_revos_local)
    table = records_to_manifest(records)
    assert table.schema.equals(MANIFEST_SCHEMA, check_metadata=True)
    assert table.num_rows == sum(len(r.expressions) for r in records)
    row = table.slice(0, 1).to_pylist()[0]
    video, expression = records[0], records[0].expressions[0]
    assert row == {
        "dataset": "revos", "split": "valid", "video_id": video.video_id, "video_uri": None,
        "frames_uri": video.frames_uri, "frame_names": list(video.frame_names), "height": 64, "width": 96,
        "exp_id": "0", "expression": expression.text, "expression_type": "referring", "type_id": 0,
        "obj_ids": list(expression.obj_ids), "anno_ids": list(expression.anno_ids),
        "annotation_uri": video.mask_dict_uri, "foreground_uri": video.foreground_uri,
    }
    types = dict(zip(table["type_id"].to_pylist(), table["expression_type"].to_pylist()))
    assert types == {0: "referring", 1: "reasoning", 2: "no_target"}


def test_round_trip_in_memory(synthetic_revos_local):
    records = _records(synthetic_revos_local)
    assert manifest_to_records(records_to_manifest(records)) == records


def test_round_trip_parquet_local(synthetic_revos_local, tmp_path):
    records = _records(synthetic_revos_local)
    uri = str(tmp_path / "out" / "manifest.parquet")
    write_manifest(records, uri)
    table = read_manifest(uri)
    assert manifest_to_records(table) == records
    assert pq.read_schema(uri).field("frame_names").type == MANIFEST_SCHEMA.field("frame_names").type


def test_round_trip_parquet_s3(s3_server, synthetic_revos_local):
    records = _records(synthetic_revos_local)
    uri = f"{s3_server.make_bucket()}/manifests/revos.parquet"
    write_manifest(records, uri, storage_options=s3_server.storage_options)
    assert manifest_to_records(read_manifest(uri, storage_options=s3_server.storage_options)) == records
    fs = s3_server.filesystem()
    assert manifest_to_records(read_manifest(uri, filesystem=fs)) == records
    assert manifest_to_records(read_manifest(uri, filesystem=s3_server.arrow_filesystem())) == records


def test_rows_grouped_by_video_in_any_order(synthetic_revos_local):
    records = _records(synthetic_revos_local)
    table = records_to_manifest(records)
    shuffled = table.take(list(range(table.num_rows))[::-1])
    back = manifest_to_records(shuffled)
    assert {r.video_id + r.dataset: r for r in back}.keys() == {r.video_id + r.dataset: r for r in records}.keys()
    for original in records:
        (match,) = [r for r in back if (r.dataset, r.video_id) == (original.dataset, original.video_id)]
        assert dataclasses.replace(match, expressions=tuple(reversed(match.expressions))) == original


def test_duplicate_rows_are_listed(synthetic_revos_local, tmp_path):
    records = _records(synthetic_revos_local)
    table = records_to_manifest(records)
    doubled = pa.concat_tables([table, table.slice(3, 2)])
    keys = [f"revos/valid/{v} exp {e!r} (x2)" for v, e in zip(table["video_id"].to_pylist()[3:5], table["exp_id"].to_pylist()[3:5])]
    with pytest.raises(ManifestError, match="2 duplicate") as info:
        manifest_to_records(doubled)
    for key in keys:
        assert key in str(info.value)
    path = tmp_path / "dup.parquet"
    pq.write_table(doubled, path)
    with pytest.raises(ManifestError, match=f"{path}: 2 duplicate"):
        read_manifest(str(path))
    with pytest.raises(ManifestError, match="duplicate"):
        records_to_manifest([records[0], records[0]])


def test_inconsistent_video_rows_are_rejected(synthetic_revos_local):
    table = records_to_manifest(_records(synthetic_revos_local)[:1])
    heights = table["height"].to_pylist()
    heights[1] = 65
    bad = table.set_column(table.schema.get_field_index("height"), "height", pa.array(heights, pa.int32()))
    with pytest.raises(ManifestError, match="rows disagree on 'height'"):
        manifest_to_records(bad)
    types = table["expression_type"].to_pylist()
    types[0] = "reasoning"
    bad = table.set_column(table.schema.get_field_index("expression_type"), "expression_type", pa.array(types))
    with pytest.raises(ManifestError, match="does not match type_id 0"):
        manifest_to_records(bad)


def test_schema_problems_are_rejected(synthetic_revos_local, tmp_path):
    table = records_to_manifest(_records(synthetic_revos_local)[:1])
    with pytest.raises(SchemaValidationError, match="missing columns"):
        manifest_to_records(table.drop_columns(["exp_id"]))
    path = tmp_path / "bad.parquet"
    pq.write_table(table.drop_columns(["frame_names"]), path)
    with pytest.raises(SchemaValidationError, match=str(path)):
        read_manifest(str(path))


def test_videos_without_expressions_have_no_rows():
    video = VideoRecord(
        dataset="d", split="s", video_id="v", frame_names=("0",), frames_uri="/f", video_uri=None,
        height=None, width=None, expressions=(),
    )
    other = dataclasses.replace(
        video, video_id="w", expressions=(ExpressionRecord(exp_id="1", text="x", obj_ids=(), anno_ids=(), type_id=2),)
    )
    table = records_to_manifest([video, other])
    assert table["video_id"].to_pylist() == ["w"]
    assert manifest_to_records(table) == [other]
