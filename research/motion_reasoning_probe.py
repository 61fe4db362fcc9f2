"""Can a transformer of the learnability LLM's size learn "which shape never moves?" and "the fastest" at all?

Why: stage G and stage 1 never learnt the motion kinds (docs/research/learnability.md, "What motion needs"). This
separates the two possible causes: what the visual tokens hold, and how much training the reasoning needs. A small
transformer (2 layers, width 128, 4 heads: the ``learn-256-pos`` LLM's size) reads 8 frames of a synthetic video (every
second of 16) plus a token for the question's kind ("never moves" or "fastest") and scores the 24 (size, colour,
shape) triples; the answer is the best-scored triple among the video's objects (cross-entropy over those). Inputs:

* ``oracle``: per frame one token per object, its triple one-hot and its true centre (times ``--centre-scale``):
  everything the question needs, so only learning can fail;
* ``merged``: the 28 DPC-KNN tokens a frame of the model's tower, exactly what the LLM's projector receives
  (``--knn-k`` and ``--position-scale`` merge them as another preset would: no weights change).

``--aux-weight`` (oracle input) adds a dense target: every object token also names its object's speed class
(static, slow, medium, fast) through a linear head, a signal on each token instead of one answer a question.

Training videos come from stream 7 and held-out ones from stream 8 (a fixed set each, so a long run sees every
question many times); held-out accuracy per kind is printed every ``--eval-every`` steps. A random pick among the
video's objects is right 0.38 ("never moves") / 0.39 ("fastest") of the time.

    python -m research.motion_reasoning_probe --input oracle --train-videos 20000 --steps 20000 --batch 256 --device cuda
    python -m research.motion_reasoning_probe --input merged --knn-k 2 2 2 --position-scale 10 --batch 256 --device cuda
    python -m research.motion_reasoning_probe --input merged --preset learn-256-pos-p4 --vision-folder out/p4/vision_pretrain \
        --train-videos 20000 --steps 2000 --batch 256
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from research.grounding_pretrain import TARGET_TRIPLES
from vrshq.data import generate_synthetic_video

KINDS = ("static", "fastest")
SPEED_CLASSES = ("static", "slow", "medium", "fast")  # vrshq.data.synthetic's speed classes
TRIPLES = {t: i for i, t in enumerate(TARGET_TRIPLES)}  # the order stage G's head scores them in
_ORACLE_SLOTS = 4  # at most 4 objects a video
_ORACLE_DIM = len(TRIPLES) + 2


def oracle_tokens(video, frames: slice, centre_scale: float) -> torch.Tensor:
    """(T, 4, 26): per frame and object slot the triple one-hot and the centre / frame size (empty slots zero)."""
    centres = np.stack([o.centers for o in video.objects])[:, frames]  # (O, T, 2)
    tokens = torch.zeros(centres.shape[1], _ORACLE_SLOTS, _ORACLE_DIM)
    for o in video.objects:
        tokens[:, o.obj_id, TRIPLES[(o.size, o.colour, o.shape)]] = 1.0
        tokens[:, o.obj_id, len(TRIPLES):] = torch.from_numpy(centres[o.obj_id] / video.frames.shape[1] * centre_scale)
    return tokens


def merged_tokens(vision, frames: np.ndarray) -> torch.Tensor:
    """(T, tokens_per_frame, hidden): the tower's DPC-KNN tokens, the projector's input."""
    with torch.no_grad():
        pixels = vision.preprocess(torch.from_numpy(frames))  # on the tower's device
        return vision.merge(vision.encode_patches(pixels)).float().cpu()


def remerge(vision, *, knn_k: tuple[int, ...] | None = None, position_scale: float | None = None):
    """``vision`` (changed in place and returned) merging with ``knn_k`` / ``centroid_position_scale``
    ``position_scale`` instead of its own (None keeps one): another preset's tokens from the same tower, since
    the merge has no weights."""
    changes = {k: v for k, v in (("knn_k", knn_k), ("centroid_position_scale", position_scale)) if v is not None}
    if changes:
        vision.cfg = dataclasses.replace(vision.cfg, merge=dataclasses.replace(vision.cfg.merge, **changes))
    return vision


def preset_tower(preset: str, vision_folder: str | None = None):
    """The vision tokenizer of a random-init ``preset`` (float32, eval, on the CPU), with a stage-V tower from
    ``vision_folder`` (``research.learnability``'s ``vision_pretrain/``) loaded into it when given: the tokens a stage
    G on that preset would read, without a trained model folder."""
    from pipelines.training.train_config import ModelSpec
    from pipelines.training.train_loop import build_training_model
    from research.presets import model_preset

    vision = build_training_model(ModelSpec(preset=model_preset(preset)), device="cpu").float().eval().vision
    if vision_folder:
        from research.vision_pretrain import load_pretrained_tower

        load_pretrained_tower(vision, vision_folder)
    return vision


def questions(stream: int, videos: int, tokens_of) -> dict[str, torch.Tensor]:
    """Every "never moves" / "fastest" question of ``videos`` videos of ``stream``: tokens, kind, the present
    triples, the target triple and, per object slot, its speed class (-100 for an empty slot)."""
    rows: dict[str, list] = {"tokens": [], "kind": [], "present": [], "target": [], "speed": []}
    for i in range(videos):
        video = generate_synthetic_video(np.random.default_rng([0, stream, i]), num_frames=16, height=64, width=64)
        asked = [e for e in video.expressions if e.kind in KINDS]
        if not asked:
            continue
        tokens = tokens_of(video)
        present = torch.zeros(len(TRIPLES), dtype=torch.bool)
        speed = torch.full((_ORACLE_SLOTS,), -100, dtype=torch.long)
        for o in video.objects:
            present[TRIPLES[(o.size, o.colour, o.shape)]] = True
            speed[o.obj_id] = SPEED_CLASSES.index(o.speed_class)
        for expression in asked:
            target = video.objects[expression.obj_ids[0]]
            rows["tokens"].append(tokens)
            rows["kind"].append(KINDS.index(expression.kind))
            rows["present"].append(present)
            rows["target"].append(TRIPLES[(target.size, target.colour, target.shape)])
            rows["speed"].append(speed)
    return {"tokens": torch.stack(rows["tokens"]), "kind": torch.tensor(rows["kind"]),
            "present": torch.stack(rows["present"]), "target": torch.tensor(rows["target"]),
            "speed": torch.stack(rows["speed"])}


class MotionReasoner(torch.nn.Module):
    """Kind token, then every frame's tokens (plus a learnt frame embedding), through a pre-norm transformer
    encoder; the kind token's output scores the 24 triples, and ``speed_head`` reads every other output (the
    dense speed target of ``--aux-weight``)."""

    def __init__(self, token_dim: int, frames: int, *, width: int, layers: int, heads: int = 4) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(token_dim, width)
        self.frame = torch.nn.Embedding(frames, width)
        self.kind = torch.nn.Embedding(len(KINDS), width)
        layer = torch.nn.TransformerEncoderLayer(width, heads, 2 * width, 0.0, batch_first=True, norm_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = torch.nn.Linear(width, len(TRIPLES))
        self.speed_head = torch.nn.Linear(width, len(SPEED_CLASSES))

    def encode(self, tokens: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
        """(B, 1 + T * N, W): the kind token's output, then every frame token's."""
        hidden = self.embed(tokens) + self.frame.weight[None, :, None]  # (B, T, N, W)
        hidden = torch.cat([self.kind(kind)[:, None], hidden.flatten(1, 2)], dim=1)
        return self.encoder(hidden)

    def forward(self, tokens: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(tokens, kind)[:, 0])


def accuracy(model: MotionReasoner, data: dict[str, torch.Tensor], batch: int = 512) -> dict[str, float]:
    """Share of questions whose best-scored present triple is the target, per kind."""
    with torch.no_grad():
        picks = torch.cat([
            model(data["tokens"][i:i + batch], data["kind"][i:i + batch])
            .masked_fill(~data["present"][i:i + batch], float("-inf")).argmax(-1)
            for i in range(0, len(data["kind"]), batch)
        ])
    right = picks == data["target"]
    return {kind: float(right[data["kind"] == k].float().mean()) for k, kind in enumerate(KINDS)}


def speed_loss(model: MotionReasoner, outputs: torch.Tensor, speed: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every oracle object token's speed class (outputs ``(B, 1 + T * 4, W)``, speed ``(B, 4)``);
    empty slots are not scored."""
    frames = (outputs.shape[1] - 1) // _ORACLE_SLOTS
    targets = speed[:, None, :].expand(-1, frames, -1).flatten(1)  # (B, T * 4), the order of encode's tokens
    return F.cross_entropy(model.speed_head(outputs[:, 1:]).flatten(0, 1), targets.flatten(), ignore_index=-100)


def train(model: MotionReasoner, data: dict, heldout: dict, *, steps: int, batch: int, lr: float,
          eval_every: int, seed: int = 0, aux_weight: float = 0.0) -> list[dict]:
    """AdamW on the answer's cross-entropy over the present triples (plus ``aux_weight`` times
    :func:`speed_loss`, oracle tokens only); held-out accuracy every ``eval_every`` steps."""
    if aux_weight and data["tokens"].shape[2:] != (_ORACLE_SLOTS, _ORACLE_DIM):
        raise ValueError("aux_weight needs oracle tokens (one token per object slot)")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(data["kind"]), (batch,), generator=generator).to(data["kind"].device)
        outputs = model.encode(data["tokens"][idx], data["kind"][idx])
        logits = model.head(outputs[:, 0]).masked_fill(~data["present"][idx], float("-inf"))
        loss = F.cross_entropy(logits, data["target"][idx])
        if aux_weight:
            loss = loss + aux_weight * speed_loss(model, outputs, data["speed"][idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % eval_every == 0 or step == steps:
            history.append({"step": step, "loss": round(loss.item(), 4),
                            **{k: round(v, 3) for k, v in accuracy(model, heldout).items()}})
            print(json.dumps(history[-1]), flush=True)
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", choices=("oracle", "merged"), default="oracle")
    parser.add_argument("--model", default="checkpoints/tiny-synthetic", help="model folder whose tower makes the "
                                                                              "merged tokens")
    parser.add_argument("--preset", help="merged input: a random-init tower of this preset instead of --model's")
    parser.add_argument("--vision-folder", help="with --preset: a stage-V folder (research.learnability's "
                                                "vision_pretrain/) whose tower is loaded")
    parser.add_argument("--train-videos", type=int, default=3000)
    parser.add_argument("--heldout-videos", type=int, default=400)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--centre-scale", type=float, default=1.0, help="oracle centres are multiplied by this")
    parser.add_argument("--aux-weight", type=float, default=0.0, help="weight of the dense speed-class target "
                                                                       "(oracle input)")
    parser.add_argument("--knn-k", type=int, nargs="+", default=None, help="merged input: the merge's k per level "
                                                                          "(default: the model's)")
    parser.add_argument("--position-scale", type=float, default=None, help="merged input: scale of the centroid "
                                                                           "embedding (default: the model's)")
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.vision_folder and not args.preset:
        parser.error("--vision-folder needs --preset (the tower of --model is already trained)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    every_second = slice(None, None, 2)
    if args.input == "oracle":
        def tokens_of(video):
            return oracle_tokens(video, every_second, args.centre_scale)
    elif args.preset:
        vision = preset_tower(args.preset, args.vision_folder).to(args.device)
    else:
        from pipelines.inference.config import InferenceConfig
        from pipelines.inference.model_loader import build_model

        with tempfile.TemporaryDirectory() as scratch:  # the loader's config wants an output folder
            vision = build_model(InferenceConfig(out=scratch, manifest="m.parquet", checkpoint=args.model,
                                                 device="cpu")).float().eval().vision.to(args.device)
    if args.input == "merged":
        remerge(vision, knn_k=tuple(args.knn_k) if args.knn_k else None, position_scale=args.position_scale)

        def tokens_of(video):
            return merged_tokens(vision, video.frames[every_second])
    started = time.perf_counter()
    data, heldout = questions(7, args.train_videos, tokens_of), questions(8, args.heldout_videos, tokens_of)
    print(json.dumps({"input": args.input, "train_questions": len(data["kind"]), "heldout_questions":
                      len(heldout["kind"]), "seconds": round(time.perf_counter() - started)}), flush=True)
    data = {k: v.to(args.device) for k, v in data.items()}
    heldout = {k: v.to(args.device) for k, v in heldout.items()}
    torch.manual_seed(0)  # the reasoner's init does not depend on what built the tokens
    model = MotionReasoner(data["tokens"].shape[-1], data["tokens"].shape[1], width=args.width,
                           layers=args.layers).to(args.device)
    train(model, data, heldout, steps=args.steps, batch=args.batch, lr=args.lr, eval_every=args.eval_every,
          aux_weight=args.aux_weight)


if __name__ == "__main__":
    main()
