"""What one benchmark invocation leaves for the next: its rows and the serial path's masks.

A remote GPU machine may cap a command at ~10 minutes, less than serial + model-only + pipeline on the
7B model. The paths can then run in separate invocations (``--paths bound,serial,model``, then
``--paths pipeline``) on the same ``--output-dir``: rows of earlier invocations with the same
workload, preset and device are merged into the table (re-measured paths replace them), and the
serial masks saved as RLE in ``serial_masks.parquet`` let a later pipeline run compute the agreement.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.throughput_report import Agreement, ResultRow

__all__ = ["load_previous_rows", "load_serial_masks", "run_key", "save_serial_masks"]

# (video_id, exp_id) -> (RLE counts per frame, (height, width))
SerialMasks = dict[tuple[str, str], tuple[list[bytes], tuple[int, int]]]


def run_key(*, preset: str, device_name: str, workload: Mapping[str, Any]) -> str:
    """Identity of a measurement setting: rows with equal keys can share one table."""
    return json.dumps({"preset": preset, "device": device_name, "workload": dict(workload)}, sort_keys=True)


def load_previous_rows(results_json: str, key: str) -> list[ResultRow]:
    """Rows of an earlier invocation with the same :func:`run_key` (empty if none or another setting)."""
    if not os.path.isfile(results_json):
        return []
    with open(results_json, encoding="utf-8") as handle:
        data = json.load(handle)
    if data.get("run_key") != key:
        return []
    rows = []
    for raw in data.get("rows", []):
        fields = {k: v for k, v in raw.items() if k not in ("masks_per_s", "frames_per_s")}
        agreement = fields.pop("agreement", None)
        rows.append(ResultRow(**fields, agreement=Agreement(**agreement) if agreement else None))
    return rows


def save_serial_masks(path: str, masks: SerialMasks, *, key: str) -> None:
    """Write the serial path's masks (RLE, one row per expression) with the run key in the metadata."""
    table = pa.table({
        "video_id": [k[0] for k in masks],
        "exp_id": [k[1] for k in masks],
        "height": pa.array([v[1][0] for v in masks.values()], pa.int32()),
        "width": pa.array([v[1][1] for v in masks.values()], pa.int32()),
        "rle_counts": pa.array([v[0] for v in masks.values()], pa.list_(pa.binary())),
    }).replace_schema_metadata({"run_key": key})
    pq.write_table(table, path)


def load_serial_masks(path: str, *, key: str) -> SerialMasks:
    """The masks :func:`save_serial_masks` wrote for the same run key (empty otherwise)."""
    if not os.path.isfile(path):
        return {}
    table = pq.read_table(path)
    if (table.schema.metadata or {}).get(b"run_key", b"").decode() != key:
        return {}
    return {(r["video_id"], r["exp_id"]): (list(r["rle_counts"]), (r["height"], r["width"]))
            for r in table.to_pylist()}
