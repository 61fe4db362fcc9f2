"""Datasets: records, readers (ReVOS, MeViS; local or any fsspec URI), frames, masks, synthetic data.

>>> from vrshq.data import read_revos, load_frames, load_expression_masks  # doctest: +SKIP
>>> videos = read_revos("s3://bucket/ReVOS", split="valid", storage_options={"anon": False})  # doctest: +SKIP
>>> frames = load_frames(videos[0])  # uint8 (T, H, W, 3)  # doctest: +SKIP
"""
from vrshq.data.errors import DataError
from vrshq.data.frames import (
    FRAME_EXTENSION,
    decode_image,
    frame_uri,
    iter_frame_chunks,
    load_frames,
    probe_frame_size,
)
from vrshq.data.masks import (
    decode_rle,
    encode_rle,
    load_expression_masks,
    load_foreground_dict,
    load_foreground_masks,
    load_mask_dict,
    union_anno_masks,
)
from vrshq.data.paths import PathEscapeError, contained_uri
from vrshq.data.readers import (
    RecordProblem,
    parse_meta_expressions,
    parse_meta_records,
    read_mevis,
    read_revos,
    revos_meta_filenames,
)
from vrshq.data.records import EXPRESSION_TYPE_IDS, ExpressionRecord, VideoRecord, normalize_eval_text
from vrshq.data.synthetic import (
    COLOURS,
    SHAPES,
    SIZES,
    SyntheticExpression,
    SyntheticObject,
    SyntheticSceneConfig,
    SyntheticVideo,
    generate_synthetic_video,
    synthetic_vocabulary,
)
from vrshq.data.synthetic_writer import SyntheticRevosInfo, encode_mp4, write_synthetic_revos

__all__ = [
    "COLOURS",
    "DataError",
    "PathEscapeError",
    "RecordProblem",
    "EXPRESSION_TYPE_IDS",
    "ExpressionRecord",
    "FRAME_EXTENSION",
    "SHAPES",
    "SIZES",
    "SyntheticExpression",
    "SyntheticObject",
    "SyntheticRevosInfo",
    "SyntheticSceneConfig",
    "SyntheticVideo",
    "VideoRecord",
    "contained_uri",
    "decode_image",
    "decode_rle",
    "encode_mp4",
    "encode_rle",
    "frame_uri",
    "generate_synthetic_video",
    "iter_frame_chunks",
    "load_expression_masks",
    "load_foreground_dict",
    "load_foreground_masks",
    "load_frames",
    "load_mask_dict",
    "normalize_eval_text",
    "parse_meta_expressions",
    "parse_meta_records",
    "probe_frame_size",
    "read_mevis",
    "read_revos",
    "revos_meta_filenames",
    "synthetic_vocabulary",
    "union_anno_masks",
    "write_synthetic_revos",
]
