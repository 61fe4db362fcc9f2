"""Speed of one training step of the learnability model: lockstep SAM2 window vs the grouped loop.

Run:
    .venv/bin/python -m benchmarks.train_step_speed                 # CPU, 16 clips, image ratio 0.5
    python -m benchmarks.train_step_speed --device cuda --clips 16   # on a GPU

From scratch on small models the step is bound by the number of operators dispatched (each a
kernel launch on a GPU), not by arithmetic: the table gives, per implementation, the operators of
one forward + backward (torch profiler count), the best wall time of ``--repeats`` steps and the
ratio reference / ours. *ours* is ``VrshqModel.forward`` as it is; *reference* swaps in
``benchmarks.train_window_reference`` (one decode and one tracking pass per conditioning-position
group). The step's loss must be equal for both (exit status 1 otherwise; dropout is off for the
comparison, since the two paths draw it in different orders).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from benchmarks.op_count import count_aten_ops
from benchmarks.train_window_reference import reference_train_window_forward


def _batch(clips: int, image_ratio: float, seed: int):
    from pipelines.training.clip_sampling import sample_synthetic_clip, samples_to_batch
    from pipelines.training.train_config import SamplingConfig
    from vrshq.data import generate_synthetic_video

    sampling = SamplingConfig(image_ratio=image_ratio)
    out, sample_id = [], 0
    while len(out) < clips:
        video = generate_synthetic_video(np.random.default_rng([seed, sample_id]), num_frames=16, height=64, width=64)
        clip = sample_synthetic_clip(video, sample_id=sample_id, seed=seed, sampling=sampling)
        sample_id += 1
        if clip is not None:
            out.append(clip)
    return samples_to_batch(out)


def _step(model, batch, device: torch.device) -> float:
    model.zero_grad(set_to_none=True)
    out = model(batch)
    out.loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return float(out.loss.detach())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="learn")
    parser.add_argument("--clips", type=int, default=16, help="clips per step (the learnability run's default)")
    parser.add_argument("--image-ratio", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from pipelines.training.train_config import ModelSpec
    from pipelines.training.train_loop import build_training_model
    from research.presets import model_preset

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = build_training_model(ModelSpec(preset=model_preset(args.preset), seed=args.seed), device=device)
    for module in model.modules():  # equal losses need equal (no) dropout draws
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if hasattr(module, "dropout_p"):
            module.dropout_p = 0.0
    model.train()
    batch = _batch(args.clips, args.image_ratio, args.seed)
    seg = model.sam2
    ours_window = seg.train_window_forward
    implementations = {
        "ours (lockstep window)": ours_window,
        "reference (grouped window)": lambda *a: reference_train_window_forward(seg, *a),
    }
    rows = {}
    for name, window in implementations.items():
        seg.train_window_forward = window
        try:
            loss = _step(model, batch, device)  # warm-up
            ops = count_aten_ops(lambda: _step(model, batch, device))
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                _step(model, batch, device)
                best = min(best, time.perf_counter() - start)
        finally:
            del seg.train_window_forward  # back to the class method
        rows[name] = (loss, ops, best)
    (l_ours, ops_ours, s_ours), (l_ref, ops_ref, s_ref) = rows.values()
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"preset {args.preset}, {args.clips} clips ({batch.num_expressions} expressions), image ratio {args.image_ratio}")
    print(f"{'path':28s} | {'aten ops/step':>13s} | {'s/step':>7s} | loss")
    for name, (loss, ops, seconds) in rows.items():
        print(f"{name:28s} | {ops:13,d} | {seconds:7.3f} | {loss:.6f}")
    print(f"ratio reference/ours: ops {ops_ref / ops_ours:.2f}x, time {s_ref / s_ours:.2f}x")
    if not np.isclose(l_ours, l_ref, rtol=1e-4, atol=1e-5):
        print(f"MISMATCH: loss {l_ours} vs {l_ref}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
