"""Host-side cost of the text path of a training batch: prompt tokenisation and the vision tower's calls.

Run:
    .venv/bin/python -m benchmarks.text_path_host                      # CPU, 128 clips (a stage-G step)
    python -m benchmarks.text_path_host --device cuda --preset learn-256-pos-k2

Why: a stage-G step of 128 clips on an H200 took 1.5 s of which the GPU's work was ~0.1 s (torch profiler);
the rest was the host: tokenising 384 prompts that repeat from step to step, and 40 tower calls of 32 frames
each for a tower whose 1,280 frames fit one call. Rows, each measured here in one run:

* ``tokenise``: *naive* calls ``encode_prompt`` per prompt; *ours* is ``VrshqModel.encode_prompt`` (cached, after
  one warm-up pass over the same prompts, as every step after the first sees them);
* ``visual``: *naive* passes ``chunk_size=32`` (the old fixed frame count); *ours* the default chunk
  (``VrshqModel.visual_chunk_frames``). Operators dispatched are counted too: on a GPU each is a kernel launch.

The outputs of both ways must be equal (exit status 1 otherwise).
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable

import torch

from benchmarks.op_count import count_aten_ops


def _best(fn: Callable[[], object], repeats: int, device: torch.device) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="learn-256-pos")
    parser.add_argument("--clips", type=int, default=128, help="clips of the batch (stage G's step in session 10)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from pipelines.clip_sampling import samples_to_batch
    from pipelines.grounding_pretrain import grounding_sample_stream
    from pipelines.train_config import ModelSpec, SamplingConfig
    from pipelines.train_loop import build_training_model
    from vrshq.model.prompts import encode_prompt

    device = torch.device(args.device)
    model = build_training_model(ModelSpec(preset=args.preset, trainable="all", seed=0), device=device).eval()
    stream = grounding_sample_stream(seed=0, start_sample=0, num_frames=16, size=64, sampling=SamplingConfig())
    batch = samples_to_batch([s.clip for s in itertools.islice(stream, args.clips)])
    prompts = [p for video in batch.videos for p in video.prompts]
    frames = torch.cat([video.frames for video in batch.videos])

    naive_tok, naive_ids = _best(lambda: [encode_prompt(model.tokenizer, p) for p in prompts], args.repeats, device)
    [model.encode_prompt(p) for p in prompts]  # the first step fills the cache
    ours_tok, our_ids = _best(lambda: [model.encode_prompt(p) for p in prompts], args.repeats, device)
    with torch.no_grad():
        naive_vis, naive_tokens = _best(lambda: model.encode_visual(frames, chunk_size=32), args.repeats, device)
        ours_vis, our_tokens = _best(lambda: model.encode_visual(frames), args.repeats, device)
        naive_ops = count_aten_ops(lambda: model.encode_visual(frames, chunk_size=32))
        our_ops = count_aten_ops(lambda: model.encode_visual(frames))
    same = naive_ids == our_ids and torch.allclose(naive_tokens.float(), our_tokens.float(), rtol=1e-4, atol=1e-5)

    print(f"{args.preset} on {device}: {args.clips} clips, {len(prompts)} prompts, {frames.shape[0]} frames "
          f"({model.visual_chunk_frames()} frames a tower call)")
    print(f"{'part':<10} {'naive s':>9} {'ours s':>9} {'ratio':>7} {'naive ops':>10} {'our ops':>8}")
    print(f"{'tokenise':<10} {naive_tok:9.4f} {ours_tok:9.4f} {naive_tok / ours_tok:7.1f} {'':>10} {'':>8}")
    print(f"{'visual':<10} {naive_vis:9.4f} {ours_vis:9.4f} {naive_vis / ours_vis:7.1f} {naive_ops:10d} {our_ops:8d}")
    print("outputs equal" if same else "OUTPUTS DIFFER")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
