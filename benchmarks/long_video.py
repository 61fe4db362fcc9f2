"""One long video with many expressions through the inference actor's model path: peak memory and masks/s.

What the actor does per video (``pipelines.inference.segment_actor.segment_video_item``): ``segment_video``
on the frames at the working resolution with the masks returned on the device at the original size, then
every expression's masks built and RLE-encoded a chunk of frames at a time. Frames are synthetic (a
rectangle moving over a grey background), made in memory; the model is a preset with random init.

Run (GPU)::

    python -m benchmarks.long_video --preset vrshq-7b-tinytok --frames 2000 --expressions 24
    python -m benchmarks.long_video --preset tiny --frames 24 --expressions 3 --height 64 --width 96 --offload-min-frames 16  # CPU check

Prints the time, masks/s, the peak device memory (allocated and reserved by PyTorch) and the host's peak
RSS, one ``name: value`` line each, then the same as one JSON line. Videos of at least
``Sam2Config.offload_features_min_frames`` frames keep their features and tracked logits on the CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["main", "moving_box_frames"]


def moving_box_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """(T, H, W, 3) uint8: a bright rectangle crossing a grey background once."""
    frames = np.full((num_frames, height, width, 3), 96, dtype=np.uint8)
    box_h, box_w = max(height // 4, 1), max(width // 5, 1)
    for t in range(num_frames):
        x = int((width - box_w) * t / max(num_frames - 1, 1))
        y = (height - box_h) // 2
        frames[t, y : y + box_h, x : x + box_w] = (230, 60, 40)
    return frames


def _working_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def run(args: argparse.Namespace) -> dict[str, float | int | str]:
    from pipelines.inference.config import InferenceConfig
    from pipelines.inference.model_loader import build_model
    from pipelines.io.rle import encode_masks

    device = torch.device(args.device)
    start = time.perf_counter()
    model = build_model(InferenceConfig(out="unused", manifest="unused.parquet", preset=args.preset, device=args.device), device=device)
    if args.offload_min_frames is not None:
        model.sam2.cfg = dataclasses.replace(model.sam2.cfg, offload_features_min_frames=args.offload_min_frames)
    built = time.perf_counter() - start
    max_side = args.max_side or model.sam2.image_size
    work_h, work_w = _working_size(args.height, args.width, max_side)
    frames = torch.from_numpy(moving_box_frames(args.frames, work_h, work_w))
    texts = [f"the red box, description {i}" for i in range(args.expressions)]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    rle_runs = 0
    print(f"built in {built:.1f} s; segmenting {args.frames} frames x {args.expressions} expressions", flush=True)
    with torch.inference_mode():
        results = model.segment_video(frames, texts, output_hw=(args.height, args.width), masks_on_device=True)
        print(f"segment_video: {time.perf_counter() - start:.1f} s", flush=True)  # progress, should a run be cut
        for index, result in enumerate(results, 1):
            for _, chunk in result.iter_mask_chunks(args.mask_chunk_frames):
                rle_runs += sum(len(counts) for counts in encode_masks(chunk))
            print(f"masks of {index}/{len(results)} expressions: {time.perf_counter() - start:.1f} s", flush=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    masks = args.frames * args.expressions
    report: dict[str, float | int | str] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "preset": args.preset, "frames": args.frames, "expressions": args.expressions,
        "video": f"{args.height}x{args.width} (model input {work_h}x{work_w})",
        "features_offloaded": bool(model.sam2.cfg.offloads_features(args.frames)),
        "build_s": round(built, 2), "seconds": round(seconds, 2), "masks": masks,
        "masks_per_s": round(masks / seconds, 1), "rle_runs": rle_runs,
        "host_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    if device.type == "cuda":
        report["gpu_peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        report["gpu_peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, float | int | str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="vrshq-7b-tinytok")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--expressions", type=int, default=24)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--max-side", type=int, default=None, help="working resolution (default: the SAM2 size)")
    parser.add_argument("--mask-chunk-frames", type=int, default=16)
    parser.add_argument("--offload-min-frames", type=int, default=None,
                        help="override Sam2Config.offload_features_min_frames")
    args = parser.parse_args(argv)
    if args.frames < 2 or args.expressions < 1:
        parser.error("--frames >= 2 and --expressions >= 1")
    report = run(args)
    for key, value in report.items():
        print(f"{key}: {value}")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
