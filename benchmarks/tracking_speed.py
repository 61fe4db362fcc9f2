"""Speed of SAM2 tracking alone: stock memory attention vs keys/values projected once (+ cuDNN chunks).

Run:
    python -m benchmarks.tracking_speed --device cuda                  # SAM2-L sizes (vrshq-7b), bf16
    .venv/bin/python -m benchmarks.tracking_speed --sam2 tiny --frames 16 --objects 4   # CPU, seconds

Lockstep tracking (``vrshq.model.sam2_lockstep``) of E objects with different keyframes over T frames,
random init, on pre-encoded features, in three variants measured in one run:

* **stock**: ``project_memory_once=False``, SAM2's own memory attention (every memory frame's keys and
  values projected and rotated at every frame that reads it), as the official predictor and the serial
  reference (:mod:`benchmarks.serial_reference`) run it;
* **projected**: ``vrshq.model.projected_memory`` with one attention call of all rows;
* **projected + cuDNN**: the default, cuDNN attention in calls of ``CUDNN_ROWS_PER_CALL`` rows (CUDA only);
* **+ compiled layer work** (``--compile``): the same with the layers' norms, projections, RoPE and MLP
  under ``torch.compile`` (``projected_memory.COMPILE_LAYER_WORK``; CUDA only).

The table gives the best of ``--repeats`` calls after one warm-up, the ratio stock / variant, and the
agreement of each variant's masks with stock's (share of masks with IoU >= 0.99, max logit difference):
in float32 the masks are equal; in bf16 rounding flips the near-ties of a random-init model.
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch

from vrshq.model import projected_memory


def _sam2_config(name: str, image_size: int | None):
    if name == "tiny":
        from vrshq.sam2_config import sam2_tiny

        return sam2_tiny(image_size=image_size or 128)
    from vrshq.builders import vrshq_7b_config

    return vrshq_7b_config().sam2


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    inter = (a & b).flatten(2).sum(-1).float()
    union = (a | b).flatten(2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def run(args: argparse.Namespace) -> list[dict]:
    from vrshq.model.sam2_segmenter import Sam2Segmenter

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    seg = Sam2Segmenter(_sam2_config(args.sam2, args.image_size), device=device).eval()
    bf16 = device.type == "cuda" and args.precision == "bf16"
    if bf16:
        seg = seg.to(torch.bfloat16)
    with torch.no_grad():  # objects present: masks are not all gated away, so tracking does real work
        seg.mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(3.0)
    size = seg.sam2.image_size
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    keyframes = [int(i * 7 % args.frames) for i in range(args.objects)]
    masks = torch.zeros(args.objects, size, size, dtype=torch.bool, device=device)
    for i in range(args.objects):  # boxes at different places and sizes
        y0 = (i * size // 11) % (size // 2)
        masks[i, y0 : y0 + size // 3, size // 5 : size // 5 + size // (3 + i % 3)] = True
    variants = [("stock", False, None), ("projected", True, None)]
    if device.type == "cuda":
        for chunk in args.rows_per_call or [projected_memory.CUDNN_ROWS_PER_CALL]:
            variants.append((f"projected + cuDNN ({chunk} rows/call)", True, chunk))
    if device.type == "cuda" and args.compile:
        variants.append((f"+ compiled layer work ({variants[-1][2]} rows/call)", True, variants[-1][2]))
    default_chunk = projected_memory.CUDNN_ROWS_PER_CALL
    rows, results = [], {}
    try:
        with torch.inference_mode(), autocast:
            features = seg.encode_video(torch.rand(args.frames, 3, size, size, device=device))
            for name, once, chunk in variants:
                projected_memory.CUDNN_ROWS_PER_CALL = chunk
                projected_memory.COMPILE_LAYER_WORK = name.startswith("+ compiled")
                times = []
                for _ in range(args.repeats + 1):
                    sync()
                    start = time.perf_counter()
                    result = seg.track(features, keyframes, masks, project_memory_once=once)
                    sync()
                    times.append(time.perf_counter() - start)
                results[name] = result.low_res_logits.float()
                rows.append({"variant": name, "first_s": times[0], "best_s": min(times[1:])})
            if args.profile:
                projected_memory.CUDNN_ROWS_PER_CALL = variants[-1][2]
                print(_profile(lambda: seg.track(features, keyframes, masks), device))
    finally:
        projected_memory.CUDNN_ROWS_PER_CALL = default_chunk
        projected_memory.COMPILE_LAYER_WORK = False
    stock = results["stock"]
    for row in rows:
        logits = results[row["variant"]]
        row["x_stock"] = rows[0]["best_s"] / row["best_s"]
        row["share_iou_099"] = float((_iou(logits > 0, stock > 0) >= 0.99).float().mean())
        row["max_dlogit"] = float((logits - stock).abs().max())
    return rows


def _profile(fn, device: torch.device) -> str:
    """The kernels of one call by device time (torch profiler), to see where tracking spends it."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=70)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sam2", choices=("large", "tiny"), default="large", help="SAM2-L (vrshq-7b) or the tiny test model")
    parser.add_argument("--image-size", type=int, default=None, help="tiny only (default 128)")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="CUDA: bf16 weights + autocast, or fp32")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--objects", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows-per-call", type=lambda v: [int(x) for x in v.split(",")], default=None,
                        help="CUDA: comma list of cuDNN rows per call to compare (default: the library's)")
    parser.add_argument("--compile", action="store_true",
                        help="CUDA: add a variant with the memory attention's layer work compiled (torch.compile)")
    parser.add_argument("--profile", action="store_true", help="print the kernels of one call of the last variant")
    args = parser.parse_args(argv)
    if args.objects < 1 or args.frames < 2 or args.repeats < 1:
        parser.error("--objects >= 1, --frames >= 2 and --repeats >= 1")
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    rows = run(args)
    print(f"SAM2 tracking ({args.sam2}), {args.objects} objects x {args.frames} frames, {name}, "
          f"{args.precision if args.device.startswith('cuda') else 'fp32'}")
    print(f"{'variant':34s} | first s | best s | x stock | masks IoU>=0.99 vs stock | max |dlogit|")
    for row in rows:
        print(f"{row['variant']:34s} | {row['first_s']:7.3f} | {row['best_s']:6.3f} | {row['x_stock']:7.2f} | "
              f"{row['share_iou_099']:24.1%} | {row['max_dlogit']:.2e}")


if __name__ == "__main__":
    main()
