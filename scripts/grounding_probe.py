"""Grounding probe (a diagnostic, not the method): can the tiny LLM learn *which object* an expression means?

A fresh LLM of ``--preset`` (default ``learn-256``) reads the real prompts (visual tokens of a vision tower,
the expression, [SEG] per frame and [TAK]) and TDA fuses its tokens into TAK', as in training. A linear head
on TAK' must name the single target's colour, shape and size: the answer itself is the loss, a far stronger
signal than SAM2's mask loss. Held-out accuracy of the full triple per expression kind tells whether the
visual tokens and the LLM can ground at all, and how fast (README, "What limits reasoning").

    python scripts/grounding_probe.py --tower checkpoints/tiny-synthetic --steps 2000 --out probe.json
    python scripts/grounding_probe.py --stage-v-steps 300 --stage-v-position-weight 0.5 --out probe_v.json

``--tower`` takes the vision tower of a model folder (a tower of ``--preset``'s size); ``--stage-v-steps``
pretrains one here instead (``pipelines.vision_pretrain``). CPU: ~0.8 s a step with one thread.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.clip_sampling import sample_synthetic_clip, samples_to_batch  # noqa: E402
from pipelines.config import InferenceConfig  # noqa: E402
from pipelines.model_loader import build_model  # noqa: E402
from pipelines.train_config import ModelSpec, SamplingConfig, VisionPretrainConfig  # noqa: E402
from pipelines.train_loop import build_scheduler, build_training_model  # noqa: E402
from pipelines.vision_pretrain import pretrain_vision_tower  # noqa: E402
from vrshq.data import generate_synthetic_video  # noqa: E402
from vrshq.data.synthetic import COLOURS, SHAPES, SIZES  # noqa: E402
from vrshq.model.prompts import encode_prompt  # noqa: E402

_HEADS = (len(COLOURS), len(SHAPES), len(SIZES))
_TRAIN_STREAM, _HELDOUT_STREAM = 1, 2


def _batch(sampling: SamplingConfig, stream: int, ids: range):
    """A TrainBatch of clips of synthetic videos ``ids`` and, per expression, its target's attribute ids
    (-100 for expressions with several targets) and kind."""
    samples, labels, kinds = [], [], []
    for i in ids:
        video = generate_synthetic_video(np.random.default_rng([0, stream, i]), num_frames=16, height=64, width=64)
        sample = sample_synthetic_clip(video, sample_id=i, seed=stream * 1000, sampling=sampling)
        if sample is None:
            continue
        by_text = {e.text.strip(): e for e in video.expressions}
        samples.append(sample)
        for text in sample.expressions:
            expression = by_text[text]
            if len(expression.obj_ids) == 1:
                obj = video.objects[expression.obj_ids[0]]
                labels.append((list(COLOURS).index(obj.colour), SHAPES.index(obj.shape), SIZES.index(obj.size)))
                kinds.append(expression.kind)
            else:
                labels.append((-100, -100, -100))
                kinds.append(None)
    return samples_to_batch(samples), torch.tensor(labels), kinds


def _fused_tak(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """TAK' of every expression and the LM loss, through the model's own prompt, MLLM, seg head and TDA."""
    encoded, visual = [], []
    for video, tokens in zip(batch.videos, model._encode_visual_clips([v.frames for v in batch.videos])):
        for prompt in video.prompts:
            encoded.append(encode_prompt(model.tokenizer, prompt))
            visual.append(tokens)
    seg, tak, ce = model._embed_tokens(encoded, visual, with_labels=True)
    return model._tda(seg, tak)[2].fused_tak.float(), ce


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tower", default="checkpoints/tiny-synthetic", help="model folder whose vision tower is used")
    parser.add_argument("--stage-v-steps", type=int, default=0, help="pretrain the tower here instead (stage V)")
    parser.add_argument("--stage-v-position-weight", type=float, default=4.0)
    parser.add_argument("--preset", default="learn-256", help="model preset (its LLM, seg head and tower sizes)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--videos-per-step", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--heldout-videos", type=int, default=96)
    parser.add_argument("--out", required=True, help="JSON file of the evaluations")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = build_training_model(ModelSpec(preset=args.preset, seed=0), device="cpu")
    if args.stage_v_steps:
        cfg = VisionPretrainConfig(steps=args.stage_v_steps, position_weight=args.stage_v_position_weight)
        summary = pretrain_vision_tower(model.vision, cfg, seed=0, folder=args.out + ".tower", num_frames=16, size=64)
        print(json.dumps({k: summary[k] for k in ("position_r2_before", "position_r2_after")}), flush=True)
    else:
        with tempfile.TemporaryDirectory() as scratch:  # the loader's config wants an output folder
            source = build_model(InferenceConfig(out=scratch, manifest="m.parquet", checkpoint=args.tower,
                                                 device="cpu"))
        model.vision.vision_tower.load_state_dict(source.vision.vision_tower.float().state_dict())
    model.vision.set_tower_trainable(False)
    torch.manual_seed(0)
    head = torch.nn.Linear(model.cfg.method.seg_embed_dim, sum(_HEADS))
    params = [p for n, p in model.named_parameters() if n.startswith(("mllm.", "seg_head.", "vision.projector."))]
    params += list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    schedule = build_scheduler(optimizer, warmup_steps=100, decay_steps=args.steps)
    sampling = SamplingConfig(image_ratio=0.0, expression_types=(0, 1))

    def loss_and_hits(batch, labels):
        fused, ce = _fused_tak(model, batch)
        parts = head(fused).split(_HEADS, dim=-1)
        loss = sum(F.cross_entropy(p, labels[:, k], ignore_index=-100) for k, p in enumerate(parts))
        return loss, ce, (torch.stack([p.argmax(-1) for p in parts], 1) == labels).all(1)

    history, started = [], time.time()
    for step in range(1, args.steps + 1):
        model.train()
        batch, labels, _ = _batch(sampling, _TRAIN_STREAM, range((step - 1) * args.videos_per_step,
                                                                 step * args.videos_per_step))
        loss, ce, _ = loss_and_hits(batch, labels)
        optimizer.zero_grad()
        (loss + ce).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if step % args.eval_every and step != args.steps:
            continue
        model.eval()
        hits = collections.defaultdict(list)
        with torch.no_grad():
            for first in range(0, args.heldout_videos, 8):
                batch, labels, kinds = _batch(sampling, _HELDOUT_STREAM, range(first, first + 8))
                for kind, hit in zip(kinds, loss_and_hits(batch, labels)[2].tolist()):
                    if kind:
                        hits[kind].append(hit)
                        hits["all"].append(hit)
        row = {"step": step, "loss": round(loss.item(), 3), "seconds": round(time.time() - started),
               **{k: round(float(np.mean(v)), 3) for k, v in sorted(hits.items())},
               "expressions": {k: len(v) for k, v in hits.items()}}
        history.append(row)
        print(json.dumps(row), flush=True)
    with open(args.out, "w") as f:
        json.dump(history, f, indent=2)


if __name__ == "__main__":
    main()
