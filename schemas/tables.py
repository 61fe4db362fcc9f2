"""Arrow schemas of every table vrshq reads or writes.

One constant per table, versioned in its metadata (``vrshq.schema``, ``vrshq.schema_version``).
Bump the version on any change of a column's name, type or meaning, and keep readers able to
read the previous version for one release.

Partitioning: the output datasets (masks, scores, errors) are hive-partitioned by ``dataset``
and ``split`` so that DuckDB, pandas or Spark prune them directly
(``.../masks/dataset=revos/split=valid/part-*.parquet``). The partition columns stay in the
schema: tables are validated before writing, with every column present.
"""
from __future__ import annotations

import pyarrow as pa

__all__ = [
    "MANIFEST_SCHEMA",
    "MASKS_SCHEMA",
    "SCORES_SCHEMA",
    "ERRORS_SCHEMA",
    "PARTITION_COLUMNS",
    "EXPRESSION_TYPES",
]

#: Columns the output datasets are partitioned by (hive style).
PARTITION_COLUMNS: tuple[str, ...] = ("dataset", "split")

#: ReVOS ``type_id`` -> expression type name (type 2: the target is absent, method §7).
EXPRESSION_TYPES: dict[int, str] = {0: "referring", 1: "reasoning", 2: "no_target"}


def _meta(name: str, version: int, doc: str) -> dict[bytes, bytes]:
    return {
        b"vrshq.schema": name.encode(),
        b"vrshq.schema_version": str(version).encode(),
        b"vrshq.doc": doc.encode(),
    }


def _run_fields() -> list[pa.Field]:
    """Provenance carried by every output row: which run, model and code produced it."""
    return [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),  # model preset name, e.g. "vrshq-7b"
        pa.field("code_version", pa.string(), nullable=False),  # git sha (or package version)
    ]


_KEY_FIELDS = [
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("video_id", pa.string(), nullable=False),  # may contain '/', e.g. "UVO/all/2E4T5NCywcE"
]

#: Input manifest: one row per (video, expression).
MANIFEST_SCHEMA = pa.schema(
    [
        *_KEY_FIELDS,
        pa.field("video_uri", pa.string()),  # mp4 file; null when the video is a JPEG folder
        pa.field("frames_uri", pa.string()),  # folder of <frame>.jpg; null for mp4 videos
        pa.field("frame_names", pa.list_(pa.field("item", pa.string(), nullable=False)), nullable=False),
        pa.field("height", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("exp_id", pa.string(), nullable=False),
        pa.field("expression", pa.string(), nullable=False),
        pa.field("expression_type", pa.string(), nullable=False),  # see EXPRESSION_TYPES
        pa.field("type_id", pa.int8(), nullable=False),
        pa.field("obj_ids", pa.list_(pa.field("item", pa.int64(), nullable=False)), nullable=False),
        pa.field("anno_ids", pa.list_(pa.field("item", pa.int64(), nullable=False)), nullable=False),
        pa.field("annotation_uri", pa.string()),  # mask_dict.json; null when there is no ground truth
        pa.field("foreground_uri", pa.string()),  # mask_dict_foreground.json (ReVOS robustness)
    ],
    metadata=_meta("manifest", 1, "one row per (video, expression) to segment"),
)

#: Predicted masks: one row per (video, expression, frame), COCO RLE (pycocotools).
MASKS_SCHEMA = pa.schema(
    [
        *_KEY_FIELDS,
        pa.field("exp_id", pa.string(), nullable=False),
        pa.field("frame_index", pa.int32(), nullable=False),  # position in the sorted frame list
        pa.field("frame_name", pa.string(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),  # RLE size [height, width]
        pa.field("width", pa.int32(), nullable=False),
        pa.field("rle_counts", pa.binary(), nullable=False),  # compressed COCO RLE counts
        pa.field("score", pa.float32(), nullable=False),  # SAM2 object-score logit of this frame
        pa.field("is_keyframe", pa.bool_(), nullable=False),  # frame chosen by TKS
        *_run_fields(),
    ],
    metadata=_meta("masks", 1, "one row per (video, expression, frame): predicted mask as COCO RLE"),
)

#: Scores: one row per (video, expression).
SCORES_SCHEMA = pa.schema(
    [
        *_KEY_FIELDS,
        pa.field("exp_id", pa.string(), nullable=False),
        pa.field("expression", pa.string(), nullable=False),
        pa.field("type_id", pa.int8(), nullable=False),
        pa.field("expression_type", pa.string(), nullable=False),
        pa.field("num_frames", pa.int32(), nullable=False),
        pa.field("num_objects", pa.int32(), nullable=False),  # objects in the expression's target
        pa.field("j", pa.float64()),  # region similarity, mean over frames (null: no ground truth)
        pa.field("f", pa.float64()),  # boundary F-measure, mean over frames
        pa.field("jf", pa.float64()),  # (j + f) / 2
        pa.field("accuracy", pa.float64()),  # pixel accuracy A (ReVOS)
        pa.field("robustness", pa.float64()),  # ReVOS robustness R; null when no foreground file
        pa.field("keyframe_index", pa.int32()),  # TKS keyframe; null when masks came from elsewhere
        pa.field("mean_target_area", pa.float64()),  # mean GT area fraction over frames
        pa.field("seconds", pa.float64()),  # model time attributed to this expression
        *_run_fields(),
    ],
    metadata=_meta("scores", 1, "one row per (video, expression): J, F, J&F and timing"),
)

#: Errors: one row per failed (video[, expression]); the job goes on with the rest.
ERRORS_SCHEMA = pa.schema(
    [
        *_KEY_FIELDS,
        pa.field("exp_id", pa.string()),  # null when the whole video failed
        pa.field("stage", pa.string(), nullable=False),  # read | decode | annotation | model | score | write
        pa.field("error_type", pa.string(), nullable=False),  # exception class name
        pa.field("message", pa.string(), nullable=False),  # names the file and the problem
        pa.field("uri", pa.string()),  # the offending file, when known
        *_run_fields(),
    ],
    metadata=_meta("errors", 1, "one row per failed video or expression, with the cause"),
)
