"""Speed of vrshq.metrics J/F against the per-frame DAVIS reference, on synthetic blob masks.

Run:
    .venv/bin/python -m benchmarks.metrics_speed                      # 200 frames of 480x854
    .venv/bin/python -m benchmarks.metrics_speed --lines 1 --output out/metrics_speed.parquet

Both implementations score the same (gt, pred) pair: per-frame J and F. The numbers must be
identical (the script exits with status 1 otherwise); the table gives frames per second (best of
``--repeats`` runs) and the ratio ours / reference. ``--lines`` adds 1-pixel lines that cross the
frame, which defeats the object crop of vrshq.metrics (its worst case).

With ``--device`` two more rows time what the inference actor does per expression
(``compute.score_on = "actor"``), chunk by chunk of 32 frames, starting from the ground truth as
``mask_dict.json`` holds it (RLE): ``actor`` decodes the ground truth on the device from the RLE strings
(``pipelines.inference.device_scoring.ground_truth_chunk``; with pycocotools when the device is a CPU) and
scores it there
(``vrshq.metrics.device.ExpressionScorer``); ``actor, GT decoded on host`` decodes the ground truth with
pycocotools on the CPU and copies it over instead.
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from benchmarks.reference_davis import db_eval_boundary, db_eval_iou, random_blob_masks
from vrshq.metrics import boundary_f, jaccard


Result = tuple[np.ndarray, np.ndarray]


def _best_seconds(implementations: dict[str, Callable[[], Result]], repeats: int) -> dict[str, tuple[float, Result]]:
    """Best wall time of each implementation; runs alternate so that load changes hit both alike."""
    best = {name: (float("inf"), None) for name in implementations}
    for _ in range(repeats):
        for name, fn in implementations.items():
            start = time.perf_counter()
            result = fn()
            seconds = time.perf_counter() - start
            if seconds < best[name][0]:
                best[name] = (seconds, result)
    return best


def _actor_paths(gt: np.ndarray, pred: Any, device: Any, chunk: int = 32) -> dict[str, Callable[[], Result]]:
    """The actor's scoring of one expression from RLE ground truth: built on the device, or decoded on the host."""
    import torch

    from pipelines.inference.device_scoring import ground_truth_chunk
    from vrshq.data.masks import encode_rle, union_anno_masks
    from vrshq.data.records import ExpressionRecord, VideoRecord
    from vrshq.metrics.device import ExpressionScorer

    num, height, width = gt.shape
    mask_dict = {"0": [encode_rle(m) if m.any() else None for m in gt]}
    expression = ExpressionRecord(exp_id="0", text="target", obj_ids=(0,), anno_ids=(0,), type_id=0)
    video = VideoRecord(dataset="bench", split="valid", video_id="v", frame_names=tuple(map(str, range(num))),
                        frames_uri="-", video_uri=None, height=height, width=width, expressions=(expression,))

    def run(build: Callable[[range], Any]) -> Result:
        scorer = ExpressionScorer(gt.shape)
        for start in range(0, num, chunk):
            frames = range(start, min(start + chunk, num))
            scorer.add(build(frames), pred[start : frames.stop])
        scores = scorer.result()  # the copy to the host waits for the device
        return scores.j_frames, scores.f_frames

    def on_device(frames: range) -> Any:
        return ground_truth_chunk(video, expression, mask_dict, (height, width), frames, device)[0]

    def on_host(frames: range) -> Any:
        return torch.from_numpy(union_anno_masks(mask_dict, (0,), num_frames=num, height=height, width=width,
                                                 frame_indices=frames)).to(device)

    run(on_device)  # warm-up
    return {f"actor ({device.type})": lambda: run(on_device),
            f"actor, GT decoded on host ({device.type})": lambda: run(on_host)}


def _git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=854)
    parser.add_argument("--blobs", type=int, default=3, help="ellipses per frame")
    parser.add_argument("--lines", type=int, default=0, help="1-pixel lines per frame (worst case for the crop)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cv2-threads", type=int, default=1, help="cv2.setNumThreads for both (1: one core, as a Ray task gets)"
    )
    parser.add_argument("--device", default=None,
                        help="also time vrshq.metrics.device (tensor ops) on this torch device, e.g. cuda; the masks "
                             "are moved there first (in the pipeline they are already there)")
    parser.add_argument("--output", default=None, help="optional Parquet file for the result rows")
    args = parser.parse_args(argv)

    cv2.setNumThreads(args.cv2_threads)
    gt, pred = random_blob_masks(
        args.frames, args.height, args.width, seed=args.seed, num_blobs=args.blobs, num_lines=args.lines
    )
    implementations = {
        "reference (per frame)": lambda: (db_eval_iou(gt, pred), db_eval_boundary(gt, pred)),
        "vrshq.metrics": lambda: (jaccard(gt, pred), boundary_f(gt, pred)),
    }
    if args.device:
        import torch

        from vrshq.metrics.device import score_masks_tensor

        device = torch.device(args.device)
        gt_t, pred_t = torch.from_numpy(gt).to(device), torch.from_numpy(pred).to(device)

        def on_device() -> Result:
            j, f = score_masks_tensor(gt_t, pred_t)
            return j.cpu().numpy(), f.cpu().numpy()  # the copy waits for the device

        on_device()  # warm-up: kernels, cuDNN plans
        implementations[f"vrshq.metrics.device ({device.type})"] = on_device
        implementations.update(_actor_paths(gt, pred_t, device))
    timings = _best_seconds(implementations, args.repeats)
    (ref_s, (ref_j, ref_f)), (ours_s, (ours_j, ours_f)) = list(timings.values())[:2]
    identical = all(np.array_equal(ref_j, j) and np.array_equal(ref_f, f) for _, (j, f) in timings.values())

    print(
        f"{args.frames} frames {args.height}x{args.width}, {args.blobs} blobs + {args.lines} lines, "
        f"target area {gt.mean():.1%}, best of {args.repeats}, cv2 threads {args.cv2_threads}"
    )
    print(f"{'implementation':<40}{'frames/s':>12}{'mean J':>12}{'mean F':>12}")
    for name, (seconds, (j, f)) in timings.items():
        print(f"{name:<40}{args.frames / seconds:>12.1f}{j.mean():>12.6f}{f.mean():>12.6f}")
    print(f"ratio ours/reference: {ref_s / ours_s:.2f}x   identical per-frame numbers: {identical}")
    for name, (seconds, _) in list(timings.items())[2:]:
        print(f"ratio {name}/reference: {ref_s / seconds:.1f}x")

    if args.output:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [
            {
                "benchmark": "metrics_speed",
                "implementation": name,
                "frames": args.frames,
                "height": args.height,
                "width": args.width,
                "blobs": args.blobs,
                "lines": args.lines,
                "cv2_threads": args.cv2_threads,
                "seconds": seconds,
                "frames_per_second": args.frames / seconds,
                "identical": identical,
                "device": args.device if "device" in name else f"cpu:{platform.processor() or platform.machine()}",
                "git_sha": _git_sha(),
            }
            for name, (seconds, _) in timings.items()
        ]
        pq.write_table(pa.Table.from_pylist(rows), args.output)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
