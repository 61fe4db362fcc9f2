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
* ``splice``: *naive* is ``benchmarks.per_prompt_reference.per_token_splice`` (a Python step per
  id, tensors per prompt); *ours* ``VrshqMLLM.build_inputs`` (the layout of the whole batch in numpy);
* ``step``: the text path's forward and backward (stage G's loss: a mean over TAK' plus the CE), *naive*
  ``per_prompt_reference.per_prompt_text_path`` (per prompt: the splice above, the `[SEG]` gather, the seg head,
  ``pad_sequence``) against ``VrshqModel.text_path``.

The outputs of both ways must be equal (exit status 1 otherwise): to a relative 1e-4; ``step`` compares TAK', CE
and the seg head's gradient of one more pass each in float32 (no autocast, no TF32), since in bf16 a batched matmul
rounds differently from per-prompt ones.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
import time
from collections.abc import Callable, Iterator

import torch

from benchmarks.op_count import count_aten_ops
from benchmarks.per_prompt_reference import per_prompt_text_path, per_token_splice, prompt_inputs


def _best(fn: Callable[[], object], repeats: int, device: torch.device) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, out


@contextlib.contextmanager
def _float32(model) -> Iterator[None]:
    """``model``'s forward without autocast and its CUDA matmuls and convolutions without TF32."""
    saved = model._autocast, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    model._autocast = contextlib.nullcontext
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        del model._autocast  # the instance attribute hid the method
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[1], saved[2]


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference of ``a`` and ``b`` relative to ``b``'s largest magnitude."""
    a, b = a.float(), b.float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="learn-256-pos")
    parser.add_argument("--clips", type=int, default=128, help="clips of the batch (a stage-G step of 128 clips)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from pipelines.training.clip_sampling import samples_to_batch
    from pipelines.training.train_config import ModelSpec, SamplingConfig
    from pipelines.training.train_loop import build_training_model
    from research.grounding_pretrain import grounding_sample_stream
    from research.presets import model_preset
    from vrshq.model.prompts import encode_prompt

    device = torch.device(args.device)
    model = build_training_model(ModelSpec(preset=model_preset(args.preset), trainable="all", seed=0), device=device).eval()
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
    differ = {"tokenise": 0.0 if naive_ids == our_ids else float("inf"), "visual": _rel_diff(naive_tokens, our_tokens)}

    encoded, visual = prompt_inputs(model, batch)
    splice_args = ([e.input_ids for e in encoded], visual, [e.labels for e in encoded])
    with torch.no_grad():
        naive_splice, naive_inputs = _best(lambda: per_token_splice(model.mllm, *splice_args), args.repeats, device)
        ours_splice, our_inputs = _best(lambda: model.mllm.build_inputs(*splice_args), args.repeats, device)
    same_layout = all(torch.equal(getattr(naive_inputs, n), getattr(our_inputs, n))
                      for n in ("attention_mask", "labels", "seg_rows", "seg_cols", "tak_positions"))
    differ["splice"] = _rel_diff(naive_inputs.inputs_embeds, our_inputs.inputs_embeds) if same_layout else float("inf")

    def step(text_path: Callable) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        fused, ce = text_path(batch)
        (fused.float().square().mean() + ce).backward()
        return fused.detach(), ce.detach(), model.seg_head.mlp[0].weight.grad.clone()

    model.train()
    naive_step, naive_out = _best(lambda: step(lambda b: per_prompt_text_path(model, b)), args.repeats, device)
    ours_step, our_out = _best(lambda: step(model.text_path), args.repeats, device)
    naive_step_ops = count_aten_ops(lambda: step(lambda b: per_prompt_text_path(model, b)))
    our_step_ops = count_aten_ops(lambda: step(model.text_path))
    # Compared in float32 (no autocast, no TF32): in bf16 the per-prompt way rounds each prompt's gradient
    # before summing 768 of them, and the two differ by ~10% of the largest gradient entry on an H200.
    with _float32(model):
        naive_out, our_out = step(lambda b: per_prompt_text_path(model, b)), step(model.text_path)
    differ["step"] = max(_rel_diff(a, b) for a, b in zip(naive_out, our_out))
    limit = 1e-4

    print(f"{args.preset} on {device}: {args.clips} clips, {len(prompts)} prompts, {frames.shape[0]} frames "
          f"({model.visual_chunk_frames()} frames a tower call)")
    print(f"{'part':<10} {'naive s':>9} {'ours s':>9} {'ratio':>7} {'naive ops':>10} {'our ops':>8} "
          f"{'max rel diff':>13}")
    rows = [("tokenise", naive_tok, ours_tok, None, None), ("visual", naive_vis, ours_vis, naive_ops, our_ops),
            ("splice", naive_splice, ours_splice, None, None),
            ("step", naive_step, ours_step, naive_step_ops, our_step_ops)]
    for name, naive_s, ours_s, n_ops, o_ops in rows:
        ops = f"{n_ops:10d} {o_ops:8d}" if n_ops is not None else f"{'':>10} {'':>8}"
        print(f"{name:<10} {naive_s:9.4f} {ours_s:9.4f} {naive_s / ours_s:7.1f} {ops} {differ[name]:13.2e}")
    same = all(d <= limit for d in differ.values())
    print(f"outputs equal (max rel diff <= {limit:g})" if same else f"OUTPUTS DIFFER (limit {limit:g})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
