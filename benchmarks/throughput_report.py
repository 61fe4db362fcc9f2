"""Rows, mask agreement, the printed table and the Parquet file of the inference benchmark.

Kept apart from the orchestration (:mod:`benchmarks.inference_throughput`) so that the arithmetic
(masks per second, extrapolation, per-mask IoU) is unit-tested without a model.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "Agreement",
    "ResultRow",
    "format_table",
    "git_sha",
    "mask_agreement",
    "decision_breakdown",
    "format_breakdown",
    "per_mask_iou",
    "write_rows",
]


@dataclass
class ResultRow:
    """One line of the table: a way of producing the workload's masks and how fast it went.

    Attributes:
        name: ``serial``, ``ours (pipeline)``, ``ours (model only)``, ``SAM2 encoder bound``, ...
        seconds: wall time for ``masks`` masks and ``frames`` video frames (extrapolated when
            ``extrapolated``: then measured on ``measured_masks`` masks of ``measured_expressions``
            expressions and scaled to the whole workload).
        gpu_busy_percent: mean GPU utilisation while it ran (None: unknown, e.g. CPU).
        agreement: per-mask IoU against the serial masks, where compared.
    """

    name: str
    seconds: float
    masks: int
    frames: int
    gpu_busy_percent: float | None = None
    extrapolated: bool = False
    measured_expressions: int | None = None
    measured_masks: int | None = None
    note: str = ""
    agreement: Agreement | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def masks_per_s(self) -> float:
        return self.masks / self.seconds if self.seconds > 0 else float("nan")

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")


@dataclass(frozen=True)
class Agreement:
    """Per-mask IoU statistics (one mask = one frame of one expression)."""

    masks: int
    min_iou: float
    share_ge_099: float
    mean_iou: float
    expressions: int


def decision_breakdown(reference: dict, candidate: dict, ious: dict) -> dict[str, Any]:
    """Where two paths' expressions part: MLLM frames (CLIP-336 anchor), keyframe (TKS), or only the masks.

    Args:
        reference, candidate: per expression key, ``{"frames": [...], "keyframe": k, "scores": [...]}``
            (the TKS scores of the MLLM frames, in the reference's order).
        ious: per expression key, the per-mask IoU array of the two paths.

    Returns:
        Counts and mask shares per class: ``same_decisions`` (same frames and keyframe: what is left
        are numeric differences of the tracked logits), ``keyframe_differs`` (same frames, another
        TKS argmax) and ``frames_differ`` (another anchor frame); for keyframe flips the reference's
        top-2 TKS score margin and the largest difference of the two paths' TKS scores, which shows
        whether the flip is a near-tie.
    """
    out: dict[str, Any] = {}
    for name in ("same_decisions", "keyframe_differs", "frames_differ"):
        out[name] = {"expressions": 0, "masks": 0, "masks_iou_ge_099": 0}
    # same decisions: frames whose object-score gate (score > 0) differs between the paths, and the
    # masks where it agrees (a gate flip changes that frame's mask and the memory of later frames)
    gate = {"gate_flips": 0, "min_abs_score_at_flip": None, "masks_same_gate": 0, "masks_same_gate_iou_ge_099": 0}
    flips = []
    for key in sorted(set(reference) & set(candidate) & set(ious)):
        ref, cand, iou = reference[key], candidate[key], np.asarray(ious[key])
        if ref["frames"] != cand["frames"]:
            name = "frames_differ"
        elif ref["keyframe"] != cand["keyframe"]:
            name = "keyframe_differs"
            scores = np.sort(np.asarray(ref["scores"], dtype=np.float64))[::-1]
            margin = float(scores[0] - scores[1]) if scores.size > 1 else float("inf")
            diff = float(np.max(np.abs(np.asarray(ref["scores"]) - np.asarray(cand["scores"]))))
            flips.append({"key": list(key), "top2_margin": margin, "max_score_diff": diff})
        else:
            name = "same_decisions"
            if "object_scores" in ref and "object_scores" in cand:
                a, b = np.asarray(ref["object_scores"]), np.asarray(cand["object_scores"])
                flip = (a > 0) != (b > 0)
                gate["gate_flips"] += int(flip.sum())
                if flip.any():
                    low = float(np.abs(a[flip]).min())
                    old_low = gate["min_abs_score_at_flip"]
                    gate["min_abs_score_at_flip"] = low if old_low is None else min(old_low, low)
                gate["masks_same_gate"] += int((~flip).sum())
                gate["masks_same_gate_iou_ge_099"] += int((iou[~flip] >= 0.99).sum())
        out[name]["expressions"] += 1
        out[name]["masks"] += int(iou.size)
        out[name]["masks_iou_ge_099"] += int((iou >= 0.99).sum())
    out["keyframe_flips"] = flips
    out["same_decisions_gate"] = gate
    return out


def format_breakdown(breakdown: dict[str, Any]) -> str:
    """One line per class of :func:`decision_breakdown`."""
    lines = []
    for name in ("same_decisions", "keyframe_differs", "frames_differ"):
        part = breakdown[name]
        share = 100 * part["masks_iou_ge_099"] / part["masks"] if part["masks"] else float("nan")
        lines.append(f"  {name}: {part['expressions']} expressions, {part['masks']} masks, "
                     f"{_fmt(share)}% with IoU >= 0.99")
    gate = breakdown.get("same_decisions_gate")
    if gate and (gate["gate_flips"] or gate["masks_same_gate"]):
        share = 100 * gate["masks_same_gate_iou_ge_099"] / max(gate["masks_same_gate"], 1)
        low = gate["min_abs_score_at_flip"]
        lines.append(f"  same_decisions: object-score gate differs on {gate['gate_flips']} frames"
                     + (f" (smallest |serial score| there {low:.2e})" if low is not None else "")
                     + f"; {gate['masks_same_gate']} masks with the same gate, {_fmt(share)}% with IoU >= 0.99")
    for flip in breakdown["keyframe_flips"]:
        lines.append(f"  keyframe flip {tuple(flip['key'])}: serial top-2 TKS margin {flip['top2_margin']:.2e}, "
                     f"max TKS score difference between the paths {flip['max_score_diff']:.2e}")
    return "\n".join(lines)


def per_mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of each frame of two bool ``(T, H, W)`` stacks; 1.0 where both are empty (DAVIS J convention).

    >>> a = np.zeros((2, 2, 2), bool); b = a.copy(); a[0, 0, 0] = b[0, 0, 0] = b[0, 0, 1] = True
    >>> per_mask_iou(a, b).tolist()
    [0.5, 1.0]
    """
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"per_mask_iou needs two (T, H, W) stacks of one shape, got {a.shape} and {b.shape}")
    inter = np.logical_and(a, b).sum(axis=(1, 2), dtype=np.int64)
    union = np.logical_or(a, b).sum(axis=(1, 2), dtype=np.int64)
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def mask_agreement(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> Agreement | None:
    """Pool :func:`per_mask_iou` over ``(reference, candidate)`` mask stacks of several expressions."""
    ious, count = [], 0
    for reference, candidate in pairs:
        ious.append(per_mask_iou(reference, candidate))
        count += 1
    if not ious:
        return None
    flat = np.concatenate(ious)
    return Agreement(masks=int(flat.size), min_iou=float(flat.min()), share_ge_099=float((flat >= 0.99).mean()),
                     mean_iou=float(flat.mean()), expressions=count)


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return f"{value:,.{digits}f}"


def format_table(rows: Sequence[ResultRow], *, serial_name: str = "serial") -> str:
    """The benchmark table (monospace), with the ratio of each row's masks/s to the serial row's."""
    serial = next((r for r in rows if r.name == serial_name), None)
    header = ("path", "masks/s", "frames/s", "seconds", "GPU busy %", "x serial", "note")
    lines = []
    for row in rows:
        ratio = row.masks_per_s / serial.masks_per_s if serial is not None and serial.masks_per_s > 0 else None
        note = row.note
        if row.extrapolated:
            note = (f"EXTRAPOLATED from {row.measured_expressions} expressions ({row.measured_masks} masks); " + note).strip("; ")
        if row.agreement is not None:
            a = row.agreement
            note = (note + f"; IoU vs serial over {a.masks} masks: min {a.min_iou:.4f}, "
                    f"{100 * a.share_ge_099:.1f}% >= 0.99").strip("; ")
        lines.append((row.name, _fmt(row.masks_per_s), _fmt(row.frames_per_s), _fmt(row.seconds),
                      _fmt(row.gpu_busy_percent), _fmt(ratio, 2) if ratio is not None else "-", note))
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) for i in range(len(header) - 1)]

    def render(cells: Sequence[str]) -> str:
        left = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:-1], widths[1:])]
        return " | ".join(left + [cells[-1]]).rstrip()

    rule = "-+-".join("-" * w for w in widths) + "-+-" + "-" * 4
    return "\n".join([render(header), rule, *(render(line) for line in lines)])


def git_sha(repo_root: str) -> str:
    """``git rev-parse HEAD`` (``+dirty`` when tracked files changed), or ``unknown`` outside a checkout."""
    try:
        sha = subprocess.run(["git", "-C", repo_root, "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", repo_root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def write_rows(
    uri: str,
    rows: Sequence[ResultRow],
    *,
    device_name: str,
    sha: str,
    config: Mapping[str, Any],
    serial_name: str = "serial",
) -> pa.Table:
    """Write the rows as one Parquet file (one row per path, with device, git sha and config) and return it."""
    serial = next((r for r in rows if r.name == serial_name), None)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    records = []
    for row in rows:
        a = row.agreement
        ratio = row.masks_per_s / serial.masks_per_s if serial is not None and serial.masks_per_s > 0 else None
        records.append({
            "path": row.name, "masks_per_s": row.masks_per_s, "frames_per_s": row.frames_per_s,
            "seconds": row.seconds, "masks": row.masks, "frames": row.frames,
            "gpu_busy_percent": row.gpu_busy_percent, "ratio_vs_serial": ratio, "extrapolated": row.extrapolated,
            "measured_expressions": row.measured_expressions, "measured_masks": row.measured_masks,
            "iou_masks": a.masks if a else None, "iou_min": a.min_iou if a else None,
            "iou_share_ge_099": a.share_ge_099 if a else None, "note": row.note,
            "extra_json": json.dumps(row.extra, default=str, sort_keys=True),
            "device": device_name, "git_sha": sha, "host": platform.node(), "timestamp": now,
            "config_json": json.dumps(dict(config), default=str, sort_keys=True),
        })
    table = pa.Table.from_pylist(records)
    os.makedirs(os.path.dirname(os.path.abspath(uri)), exist_ok=True)
    pq.write_table(table, uri)
    return table


def rows_as_dicts(rows: Sequence[ResultRow]) -> list[dict[str, Any]]:
    """Plain dicts of the rows (for JSON logs)."""
    return [asdict(r) for r in rows]
