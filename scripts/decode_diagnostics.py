"""Where a learnability model loses the target: the text path, SAM2's image features, or the decoder between them.

Three measurements on a model folder (CPU, float32; a diagnostic, not the method), each answering one question:

1. ``tak``: does TAK' say which object is meant? A linear head fitted on TAK' of training-stream clips names
   the target set among the video's objects (the stage-G target, ``pipelines.grounding_pretrain``); held-out
   accuracy per expression kind.
2. ``image``: do SAM2's image embeddings (the level the mask decoder reads) say what covers each cell? Linear
   probes of the colour, shape and size of the object covering a cell (>= 60%; background cells: < 1%).
3. ``referring``: how often the keyframe mask is the right object (IoU >= 0.3) for referring expressions,
   split by the attributes the expression names ("the triangle" vs "the red shape").

Measured on the session-7 model (README, "What limits reasoning"): TAK' names 93% of referring targets, SAM2's
image embeddings give colour at 99.9% but shape at 63%, and the keyframe mask is right for 100% of colour-only
expressions but 41% of shape-only ones: the decoder cannot find by shape what the image features hardly encode.

    python scripts/decode_diagnostics.py checkpoints/tiny-synthetic --videos 64
"""
from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.clip_sampling import samples_to_batch  # noqa: E402
from pipelines.config import InferenceConfig  # noqa: E402
from jobs.learnability import _HELDOUT_STREAM  # noqa: E402
from pipelines.grounding_pretrain import grounding_sample_stream, heldout_grounding_samples  # noqa: E402
from pipelines.model_loader import build_model  # noqa: E402
from pipelines.train_config import SamplingConfig  # noqa: E402
from vrshq.data import generate_synthetic_video  # noqa: E402
from vrshq.data.synthetic import COLOURS, SHAPES, SIZES  # noqa: E402

_ATTRIBUTES = (("colour", tuple(COLOURS)), ("shape", SHAPES), ("size", SIZES))


def fit_linear_probe(x: torch.Tensor, y: torch.Tensor, classes: int, *, steps: int = 500) -> torch.nn.Linear:
    """Class-balanced softmax regression on standardised features (the standardisation is folded into the head)."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    head = torch.nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    weight = 1.0 / torch.bincount(y, minlength=classes).float().clamp_min(1)
    weight = weight / weight.sum() * classes
    z = (x - mean) / std
    with torch.enable_grad():  # callers may hold torch.no_grad() for the model's features
        for _ in range(steps):
            loss = F.cross_entropy(head(z), y, weight=weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():  # fold the standardisation into the weights
        head.weight.div_(std)
        head.bias.sub_(head.weight @ mean)
    return head


def cell_probe_accuracy(features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Per attribute: accuracy on object cells (label > 0) of a linear probe fitted on 3/4 of the cells and
    scored on the rest. ``features`` (N, C), ``labels`` (N, 3) long (colour, shape, size; 0 = background)."""
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(0))
    fit, test = order[: len(order) * 3 // 4], order[len(order) * 3 // 4 :]
    out = {}
    for k, (name, values) in enumerate(_ATTRIBUTES):
        head = fit_linear_probe(features[fit], labels[fit, k], len(values) + 1)
        with torch.no_grad():
            predicted = head(features[test]).argmax(1)
        on_object = labels[test, k] > 0
        out[name] = float((predicted[on_object] == labels[test, k][on_object]).float().mean())
    return out


def image_feature_cells(model, videos: int, *, seed: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """Cells of SAM2's lowest-resolution image embedding (what the mask decoder reads) with the attributes of
    the object covering at least 60% of each (background: less than 1% covered; cells in between are left out)."""
    features, labels = [], []
    for i in range(videos):
        video = generate_synthetic_video(np.random.default_rng([seed, i]), num_frames=4, height=64, width=64)
        with torch.no_grad():
            embedding = model.sam2.encode_frames(torch.from_numpy(video.frames)).backbone_fpn[-1].float()
        grid = embedding.shape[-1]
        cover = F.adaptive_avg_pool2d(torch.from_numpy(video.object_masks).float(), grid)  # (O, T, g, g)
        best, owner = cover.max(0)
        ids = torch.tensor([[list(values).index(getattr(o, name)) + 1 for name, values in _ATTRIBUTES]
                            for o in video.objects])
        keep = (best >= 0.6) | (best <= 0.01)
        cell_labels = torch.where((best >= 0.6)[..., None], ids[owner], 0)
        features.append(embedding.permute(0, 2, 3, 1)[keep])
        labels.append(cell_labels[keep])
    return torch.cat(features), torch.cat(labels)


def tak_grounding(model, *, train_clips: int, heldout_videos: int) -> dict[str, float]:
    """Held-out accuracy (exact target set) of a linear head on TAK', per kind; fitted on training-stream clips."""
    sampling = SamplingConfig(image_ratio=0.0, expression_types=(0, 1))
    train = list(itertools.islice(grounding_sample_stream(seed=0, start_sample=10**6, num_frames=16, size=64,
                                                          sampling=sampling), train_clips))
    heldout = heldout_grounding_samples(heldout_videos, seed=0, stream=_HELDOUT_STREAM, num_frames=16, size=64,
                                        sampling=sampling)

    def taks(samples):
        out = []
        with torch.no_grad():
            for first in range(0, len(samples), 8):
                out.append(model.text_path(samples_to_batch([s.clip for s in samples[first : first + 8]]))[0].float())
        return torch.cat(out), torch.from_numpy(np.concatenate([s.targets for s in samples]))

    x, y = taks(train)
    mean, std = x.mean(0), x.std(0) + 1e-6
    head = torch.nn.Linear(x.shape[1], y.shape[1])
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    scored = y >= 0
    with torch.enable_grad():
        for _ in range(1500):
            loss = F.binary_cross_entropy_with_logits(head((x - mean) / std)[scored], y[scored])
            optimizer.zero_grad()
            (loss + 1e-3 * head.weight.pow(2).sum()).backward()
            optimizer.step()
    xh, yh = taks(heldout)
    with torch.no_grad():
        logits = head((xh - mean) / std)
    hits = ((logits > 0) == (yh > 0.5)).logical_or(yh < 0).all(1).tolist()
    by_kind = collections.defaultdict(list)
    for kind, hit in zip((k for s in heldout for k in s.kinds), hits):
        by_kind[kind].append(hit)
        by_kind["all"].append(hit)
    return {k: float(np.mean(v)) for k, v in sorted(by_kind.items())}


def referring_by_attributes(model, videos: int) -> dict[str, dict[str, float]]:
    """Share of referring expressions whose keyframe mask is the target (IoU >= 0.3), by the attributes named."""
    right = collections.defaultdict(list)
    for i in range(videos):
        video = generate_synthetic_video(np.random.default_rng([0, _HELDOUT_STREAM, i]), num_frames=16, height=64,
                                         width=64)
        expressions = [e for e in video.expressions if e.kind == "referring"]
        if not expressions:
            continue
        with torch.no_grad():
            results = model.segment_video(video.frames, [e.text for e in expressions])
        for result, expression in zip(results, expressions):
            words = set(expression.text.split())
            named = "+".join(name for name, values in _ATTRIBUTES if words & set(values)) or "none"
            k = result.keyframe_idx
            pred, truth = np.asarray(result.masks, bool)[k], video.target_masks(expression)[k]
            union = (pred | truth).sum()
            right[named].append(bool(union == 0 or (pred & truth).sum() / union >= 0.3))
    return {k: {"right": float(np.mean(v)), "expressions": len(v)} for k, v in sorted(right.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="model folder (jobs.learnability's model/, or checkpoints/tiny-synthetic)")
    parser.add_argument("--videos", type=int, default=64, help="held-out videos of the referring split")
    parser.add_argument("--image-videos", type=int, default=40, help="videos (4 frames each) of the image probe")
    parser.add_argument("--tak-train-clips", type=int, default=384)
    parser.add_argument("--tak-heldout-videos", type=int, default=96)
    parser.add_argument("--only", choices=("tak", "image", "referring"), help="one measurement only")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:  # the loader's config wants an output folder
        model = build_model(InferenceConfig(out=scratch, manifest="m.parquet", checkpoint=args.model, device="cpu"))
    model = model.float().eval()
    report = {}
    if args.only in (None, "tak"):
        report["tak_grounding"] = tak_grounding(model, train_clips=args.tak_train_clips,
                                                heldout_videos=args.tak_heldout_videos)
        print(json.dumps({"tak_grounding": report["tak_grounding"]}), flush=True)
    if args.only in (None, "image"):
        report["image_cells"] = cell_probe_accuracy(*image_feature_cells(model, args.image_videos))
        print(json.dumps({"image_cells": report["image_cells"]}), flush=True)
    if args.only in (None, "referring"):
        report["referring"] = referring_by_attributes(model, args.videos)
        print(json.dumps({"referring": report["referring"]}), flush=True)


if __name__ == "__main__":
    main()
