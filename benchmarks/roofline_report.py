"""What the inference benchmark prints beside masks/s: the roofline (achieved TFLOP/s and share of the
card's dense bf16 peak per path, the model-only stage split) and the pipeline's time split with the
one-tenth rule for scoring."""
from __future__ import annotations

from benchmarks.local_paths import BOUND, MODEL_ONLY, PIPELINE, PIPELINE_STEADY
from benchmarks.throughput_report import ResultRow

__all__ = ["pipeline_split_lines", "roofline_lines"]


def roofline_lines(rows: dict[str, ResultRow], device_name: str) -> list[str]:
    """Achieved TFLOP/s and % of the card's dense bf16 peak per row, and the model-only stage split.

    The workload's FLOPs come from :mod:`benchmarks.flops` (counted by the model-only path from the
    model's shapes and its decisions); the pipeline rows do the same work, so they share the count.
    The serial path does more (it re-encodes per expression) and gets none.
    """
    from benchmarks.flops import dense_bf16_peak_tflops, format_roofline

    peak = dense_bf16_peak_tflops(device_name)
    model_row = rows.get(MODEL_ONLY)
    workload_flops = (model_row.extra.get("workload_flops") if model_row else None)
    lines = [""]
    peak_text = f"{peak:.1f} TFLOP/s dense bf16 (datasheet)" if peak else "no dense bf16 peak known for this device"
    lines.append(f"roofline on {device_name}: {peak_text}; workload "
                 + (f"{workload_flops / 1e12:.1f} TFLOP (benchmarks.flops)" if workload_flops else "FLOPs not counted "
                    "(run the model path)"))
    lines.append(f"{'path':<24}| {'masks/s':>8} | {'TFLOP/s':>8} | {'% peak':>6}")
    for key in (PIPELINE, PIPELINE_STEADY, MODEL_ONLY, BOUND):
        row = rows.get(key)
        if row is None:
            continue
        flops = row.extra.get("workload_flops") if key == BOUND else workload_flops
        if flops and key != BOUND and row.masks != (model_row.masks if model_row else row.masks):
            flops = flops * row.masks / model_row.masks  # a steady row of part of the masks
        rate = flops / row.seconds / 1e12 if flops and row.seconds > 0 else None
        rate_text = f"{rate:8.1f}" if rate else f"{'-':>8}"
        share = f"{100 * rate / peak:6.1f}" if rate and peak else f"{'-':>6}"
        if rate:
            row.extra["tflops_per_s"] = rate
            if peak:
                row.extra["percent_of_peak"] = 100 * rate / peak
        lines.append(f"{key:<24}| {row.masks_per_s:8.1f} | {rate_text} | {share}")
    if model_row and model_row.extra.get("stage_seconds"):
        lines.append("")
        lines.append("model-only stage split (decode and writers are host-timed around the model calls; the model's "
                     "stages, masks_rle and score are CUDA-event times):")
        lines.append(format_roofline(model_row.extra.get("stage_flops", {}), model_row.extra["stage_seconds"],
                                     peak_tflops=peak))
        stage_seconds = model_row.extra["stage_seconds"]
        total = sum(stage_seconds.values())
        writers = stage_seconds.get("score", 0.0) + stage_seconds.get("writers", 0.0)
        if total > 0:
            lines.append(f"scoring (as the actor does) + Parquet: {100 * writers / total:.1f}% of the time; scoring alone "
                         f"{1e3 * stage_seconds.get('score', 0.0) / max(model_row.masks, 1):.3f} ms per mask vs "
                         f"{1e3 * stage_seconds.get('track', 0.0) / max(model_row.masks, 1):.3f} ms of tracking")
    pipeline_row = rows.get(PIPELINE)
    if pipeline_row is not None:
        lines += pipeline_split_lines((pipeline_row.extra.get("summary") or {}).get("stage_seconds") or {},
                                      masks=pipeline_row.masks)
    return lines


#: Stages of the pipeline's time split that are not the model's own (``InferenceSummary.stage_seconds``).
_ACTOR_SCORE = "score"
_WRITER_STAGES = ("writer_score", "writer_write")


def pipeline_split_lines(stage_seconds: dict[str, float], *, masks: int) -> list[str]:
    """The pipeline's time split, summed over its videos: is scoring under a tenth of the GPU time?

    The GPU time that made the masks is the model actor's model stages plus ``masks_rle`` (CUDA-event
    times on a GPU); scoring in the actor is ``score`` (the ground truth built from its RLE on the device,
    then J, F and the A/R counts); the writers' are host times of their CPU actors.
    """
    if not stage_seconds:
        return []
    other = {_ACTOR_SCORE, *_WRITER_STAGES}
    making = sum(v for k, v in stage_seconds.items() if k not in other)
    score = stage_seconds.get(_ACTOR_SCORE, 0.0)
    per_mask = 1e3 / max(masks, 1)
    lines = ["", "pipeline time split (summed over videos; the actor's stages are CUDA-event times on a GPU):",
             "  " + ", ".join(f"{k} {v:.2f} s" for k, v in stage_seconds.items())]
    if making > 0:
        verdict = "within" if score <= 0.1 * making else "OVER"
        lines.append(f"  scoring in the actor: {score:.3f} s on the device = {100 * score / making:.1f}% of the "
                     f"{making:.2f} s that made the masks ({verdict} the one-tenth rule; {per_mask * score:.3f} vs "
                     f"{per_mask * making:.3f} ms per mask, its ground truth built there included)")
    lines.append(f"  writers: scoring {stage_seconds.get(_WRITER_STAGES[0], 0.0):.3f} s, writing "
                 f"{stage_seconds.get(_WRITER_STAGES[1], 0.0):.3f} s (CPU actors, beside the model actor)")
    return lines
