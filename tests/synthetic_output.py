"""A synthetic ``infer`` output (masks, scores, errors parts as ``infer`` writes them) for table tests.

No model and no Ray: rows with random RLE bytes and scores, one part per ``per_file`` videos (in a
shuffled video order, so parts overlap in video ranges as real runs' parts do), plus optionally an
orphan masks part (a batch whose scores were never written).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipelines.io.writers import read_output, write_batch
from schemas import ERRORS_SCHEMA, MASKS_SCHEMA, SCORES_SCHEMA

RUN = {"run_id": "r1", "model": "tiny", "code_version": "c"}


def make_output(out: str, *, videos: int = 40, exps: int = 3, frames: int = 5, per_file: int = 2, seed: int = 0,
                orphan: bool = True, dataset: str = "revos", split: str = "valid", first: int = 0) -> None:
    rng = np.random.default_rng(seed)
    order = first + rng.permutation(videos)
    for b in range(0, videos, per_file):
        keys = {"dataset": dataset, "split": split}
        masks, scores, errors = [], [], []
        for v in (f"v{int(i):04d}" for i in order[b:b + per_file]):
            for e in range(exps):
                for t in range(frames):
                    masks.append({**keys, "video_id": v, "exp_id": str(e), "frame_index": t, "frame_name": f"{t:05d}",
                                  "height": 4, "width": 4, "rle_counts": rng.bytes(6), "score": float(rng.normal()),
                                  "is_keyframe": t == 0, **RUN})
                scores.append({**keys, "video_id": v, "exp_id": str(e), "expression": "x", "type_id": 0,
                               "expression_type": "referring", "num_frames": frames, "num_objects": 1,
                               "j": float(rng.random()), "f": 0.5, "jf": 0.5, "accuracy": None, "robustness": None,
                               "keyframe_index": 0, "mean_target_area": 0.1, "seconds": 0.0, **RUN})
            errors.append({**keys, "video_id": v, "exp_id": None if b % 4 else "1", "stage": "read",
                           "error_type": "X", "message": f"m{v}", "uri": None, **RUN})
        write_batch(out, {"masks": pa.Table.from_pylist(masks, schema=MASKS_SCHEMA),
                          "scores": pa.Table.from_pylist(scores, schema=SCORES_SCHEMA),
                          "errors": pa.Table.from_pylist(errors, schema=ERRORS_SCHEMA)},
                    batch_id=f"b{first}-{b:05d}")
    if orphan:
        write_batch(out, {"masks": pa.Table.from_pylist(masks[:3], schema=MASKS_SCHEMA)}, batch_id="orphan")


def all_rows(out: str) -> dict[str, list[tuple]]:
    """Every row of every table, sorted (duplicates kept, so they show)."""
    return {table: sorted((tuple(r.values()) for r in read_output(out, table).to_pylist()), key=repr)
            for table in ("masks", "scores", "errors")}
