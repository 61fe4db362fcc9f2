"""Arrow schemas of the tables that pass between pipeline stages: from a Ray actor to a writer, and to the driver.

These tables are never written to storage; they cross process boundaries in Ray's object store. Each stage builds
its output against the schema here (``pa.Table.from_pylist(rows, schema=...)``), so the stage that reads it sees
the same columns and types, and a change to either side is a change to one constant. Versioned like the output
tables (``vrshq.schema``, ``vrshq.schema_version``).
"""
from __future__ import annotations

import pyarrow as pa

from schemas.tables import _meta

__all__ = ["SEGMENT_RESULT_SCHEMA", "VIDEO_SCORES_SCHEMA", "WRITE_SUMMARY_SCHEMA"]

#: The model stage (``pipelines.inference.segment_actor.SegmentActor``) -> the scoring/writing stage
#: (``pipelines.inference.result_writer.ResultWriter``): one row per video.
SEGMENT_RESULT_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string()),
        pa.field("split", pa.string()),
        pa.field("video_id", pa.string()),
        pa.field("item_json", pa.string()),  # the VideoRecord with its pending expressions
        pa.field("height", pa.int32()),  # original frame size (RLE size)
        pa.field("width", pa.int32()),
        pa.field(
            "results",
            pa.list_(
                pa.struct(
                    [
                        pa.field("exp_id", pa.string()),
                        pa.field("rle_counts", pa.list_(pa.binary())),  # one per frame
                        pa.field("object_scores", pa.list_(pa.float32())),  # one per frame
                        pa.field("keyframe_index", pa.int32()),
                        pa.field("seconds", pa.float64()),
                        # scored in the actor (pipelines.inference.device_scoring); null: the writers score
                        pa.field("frame_scores", pa.struct([
                            pa.field("j", pa.list_(pa.float64())),  # one per frame
                            pa.field("f", pa.list_(pa.float64())),
                            pa.field("mismatches", pa.int64()),
                            pa.field("false_positives", pa.int64()),
                            pa.field("target_pixels", pa.int64()),
                        ])),
                    ]
                )
            ),
        ),
        pa.field("errors_json", pa.string()),  # JSON list of ERRORS fragments (exp_id, stage, ...)
        pa.field("stage_seconds_json", pa.string()),  # JSON {stage: seconds} of this video in the actor
    ],
    metadata=_meta("segment_result", 1, "model stage -> writer stage, one row per video"),
)

#: The scoring/writing stage -> the inference driver, which counts them: one row per video.
WRITE_SUMMARY_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string()),
        pa.field("split", pa.string()),
        pa.field("video_id", pa.string()),
        pa.field("num_expressions", pa.int32()),
        pa.field("masks_rows", pa.int64()),
        pa.field("scores_rows", pa.int64()),
        pa.field("errors_rows", pa.int64()),
        pa.field("write_error", pa.string()),  # "" when the batch was written
        pa.field("pending_exp_ids", pa.list_(pa.string())),  # the expressions a failed write costs
        pa.field("stage_seconds_json", pa.string()),  # JSON {stage: seconds}: the actor's, writer_score, writer_write
    ],
    metadata=_meta("write_summary", 1, "writer stage -> driver, one row per video"),
)

#: The evaluation's scoring actors (``pipelines.evaluation.scoring``) -> the evaluation driver: one row per
#: SCORES or ERRORS row of a video, carried as JSON (the two outputs have different schemas; one Ray dataset
#: carries both).
VIDEO_SCORES_SCHEMA = pa.schema(
    [
        pa.field("kind", pa.string()),  # "score" | "error"
        pa.field("video_id", pa.string()),
        pa.field("model", pa.string()),  # the masks' model column (provenance); null for PNG input
        pa.field("row", pa.string()),  # the SCORES_SCHEMA / ERRORS_SCHEMA row as JSON
    ],
    metadata=_meta("video_scores", 1, "scoring actors -> evaluation driver, one row per score or error row"),
)
