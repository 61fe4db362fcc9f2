"""Where a learnability model loses the target: the text path, SAM2's image features, or the decoder between them.

Six measurements on a model folder (CPU, float32; a diagnostic, not the method), each answering one question:

1. ``tak``: does TAK' say which object is meant? A linear head fitted on TAK' of training-stream clips names
   the target set among the video's objects (the stage-G target, ``research.grounding_pretrain``); held-out
   accuracy per expression kind.
2. ``image``: do SAM2's image embeddings (the level the mask decoder reads) say what covers each cell? Linear
   probes of the colour, shape and size of the object covering a cell (>= 60%; background cells: < 1%).
3. ``referring``: how often the keyframe mask is the right object (IoU >= 0.3) for referring expressions,
   split by the attributes the expression names ("the triangle" vs "the red shape").
4. ``motion``: can motion be read from the visual tokens the LLM gets at all? A probe with an oracle object query
   (an embedding of the object's size-colour-shape triple) attends over one frame's tokens (the tower, the
   DPC-KNN merge and the centroid positions, what the projector maps into the LLM; ``--motion-tokens patches``:
   the unmerged patches with their positions) and regresses the object's centre. Held out: the centre's R^2, and
   "never moves" / "fastest" answered by the speed rule (mean |step| of the centre) on the probe's centres
   against the true ones (the rule's ceiling). ``--vision-folder`` first loads a stage-V tower.
5. ``landing``: does the mask decoder find the object TAK' names? Per kind, over one-target expressions, the object
   the keyframe mask lands on against the one that measurement 1's head reads from the TAK' of that inference.
6. ``retention`` (with ``--grounding-folder``, the run's ``grounding_pretrain/``): how much of stage G's grounding the
   model keeps after stage 1. Stage G's own throw-away head scores this model's TAK' on stage G's held-out clips
   (exact target sets and one-target picks per kind), against the same head on stage G's text path.

Measured on an earlier model (docs/research/learnability.md, "What limits reasoning"): TAK' names 93% of referring
targets, SAM2's image embeddings give colour at 99.9% but shape at 63%, and the keyframe mask is right for 100% of
colour-only expressions but 41% of shape-only ones: the decoder cannot find by shape what the image features hardly
encode. Later (docs/research/learnability.md, "The attribute aid and what now limits"): with the stage-0 attribute aid
shape per cell is 96% and shape-only expressions are found 91% of the time; the motion probe reads object centres from
the merged tokens at R^2 0.53, and the speed rule on them is near chance. Then (docs/research/learnability.md, "Keeping
stage G's grounding through stage 1"): stage G's head picks 0.88 of the targets on its own text path and 0.80 on the
committed model's TAK' (0.35 for "hides behind"); for that kind the keyframe mask misses 70% of the targets that TAK'
names.

    python -m research.decode_diagnostics checkpoints/tiny-synthetic --videos 64
"""
from __future__ import annotations

import argparse
import collections
import itertools
import json
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.training.clip_sampling import samples_to_batch
from pipelines.inference.config import InferenceConfig
from pipelines.inference.model_loader import build_model
from pipelines.training.train_config import SamplingConfig
from research.grounding_pretrain import grounding_sample_stream, heldout_grounding_samples
from research.learnability import _HELDOUT_STREAM
from vrshq.data import generate_synthetic_video
from vrshq.data.synthetic import COLOURS, SHAPES, SIZES

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


def fit_tak_head(model, *, train_clips: int) -> torch.nn.Linear:
    """A linear head on TAK' scoring the 24 (size, colour, shape) triples as targets (BCE over the present ones),
    fitted on training-stream clips; the standardisation is folded into it, so it reads raw TAK'."""
    sampling = SamplingConfig(image_ratio=0.0, expression_types=(0, 1))
    train = list(itertools.islice(grounding_sample_stream(seed=0, start_sample=10**6, num_frames=16, size=64,
                                                          sampling=sampling), train_clips))
    with torch.no_grad():
        x = torch.cat([model.text_path(samples_to_batch([s.clip for s in train[first : first + 8]]))[0].float()
                       for first in range(0, len(train), 8)])
    y = torch.from_numpy(np.concatenate([s.targets for s in train]))
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
    with torch.no_grad():
        head.weight.div_(std)
        head.bias.sub_(head.weight @ mean)
    return head


def _heldout_clips(videos: int):
    """Stage G's clips of the first ``videos`` held-out videos (the stream that training never sees)."""
    return heldout_grounding_samples(videos, seed=0, stream=_HELDOUT_STREAM, num_frames=16, size=64,
                                     sampling=SamplingConfig(image_ratio=0.0, expression_types=(0, 1)))


def tak_grounding(model, head: torch.nn.Linear, *, heldout_videos: int) -> dict[str, float]:
    """Held-out accuracy (exact target set) of ``head`` (:func:`fit_tak_head`) on TAK', per kind: stage G's own
    score (``research.grounding_pretrain.grounding_scores``)."""
    from research.grounding_pretrain import grounding_scores

    return grounding_scores(model, head, _heldout_clips(heldout_videos))[0]


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


def landed_object(mask: np.ndarray, object_masks: np.ndarray, *, min_iou: float = 0.3) -> int:
    """The object whose visible mask (``object_masks``, (N, H, W) bool) the predicted ``mask`` (H, W) overlaps best
    by IoU, or -1 when none reaches ``min_iou`` (an empty mask, or one spread over several objects)."""
    mask = np.asarray(mask, dtype=bool)
    union = (mask[None] | object_masks).reshape(len(object_masks), -1).sum(1)
    inter = (mask[None] & object_masks).reshape(len(object_masks), -1).sum(1)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return int(iou.argmax()) if len(iou) and iou.max() >= min_iou else -1


def keyframe_landing(model, head: torch.nn.Linear, videos: int) -> dict[str, dict[str, float]]:
    """Per kind, over the one-target expressions of the held-out videos: which object the keyframe mask lands on
    (:func:`landed_object`) against the object TAK' names (``head``'s best-scored present triple on the TAK' that
    inference itself computed).

    Why: a wrong keyframe mask is either a TAK' that names another object (grounding: stage G, the LLM) or a
    decoder that does not find the object TAK' names (SAM2's mask decoder, the seg head). Shares: ``named`` (TAK'
    names the target), ``on_target``, ``on_named`` (the decoder follows TAK'), ``on_none`` (no object at IoU 0.3),
    ``named_but_missed`` (TAK' names the target, the mask is elsewhere).
    """
    from research.grounding_pretrain import TARGET_TRIPLES

    captured: list[torch.Tensor] = []
    select = model._select_keyframes

    def spy(features, frame_sets, tda):  # the TAK' that this very inference decodes
        captured.append(tda.fused_tak.detach().float())
        return select(features, frame_sets, tda)

    rows = collections.defaultdict(lambda: collections.defaultdict(list))
    model._select_keyframes = spy
    try:
        for i in range(videos):
            video = generate_synthetic_video(np.random.default_rng([0, _HELDOUT_STREAM, i]), num_frames=16, height=64,
                                             width=64)
            expressions = [e for e in video.expressions if e.type_id in (0, 1) and len(e.obj_ids) == 1]
            if not expressions:
                continue
            captured.clear()
            with torch.no_grad():
                results = model.segment_video(video.frames, [e.text for e in expressions])
                scores = head(captured[-1]).cpu().numpy()
            columns = [TARGET_TRIPLES.index((o.size, o.colour, o.shape)) for o in video.objects]
            for expression, result, score in zip(expressions, results, scores):
                target = expression.obj_ids[0]
                named = video.objects[int(np.argmax(score[columns]))].obj_id
                key = int(result.keyframe_idx)
                landed = landed_object(np.asarray(result.masks[key], bool), video.object_masks[:, key])
                for kind in (expression.kind, "all"):
                    row = rows[kind]
                    row["named"].append(named == target)
                    row["on_target"].append(landed == target)
                    row["on_named"].append(landed == named)
                    row["on_none"].append(landed < 0)
                    row["named_but_missed"].append(named == target and landed != target)
    finally:
        del model._select_keyframes  # the instance attribute: the class's method again
    return {kind: {**{k: float(np.mean(v)) for k, v in row.items()}, "expressions": len(row["named"])}
            for kind, row in sorted(rows.items())}


def grounding_retention(model, grounding_folder: str, *, heldout_videos: int) -> dict[str, dict]:
    """Stage G's head (``research.grounding_pretrain.load_grounding_head``) on ``model``'s TAK' and, for reference,
    on stage G's own text path (loaded into a copy), over ``heldout_videos`` held-out videos' clips."""
    import copy

    from research.grounding_pretrain import grounding_scores, load_grounding_head, load_text_path, read_summary

    summary = read_summary(grounding_folder)
    if summary is None:
        raise SystemExit(f"--grounding-folder {grounding_folder}: no stage G summary there")
    head = load_grounding_head(model, grounding_folder)
    target_loss = summary["config"].get("target_loss", "bce")
    heldout = _heldout_clips(heldout_videos)
    stage_g = copy.deepcopy(model)
    load_text_path(stage_g, grounding_folder)
    out = {}
    for name, scored in (("model", model), ("stage_g", stage_g)):
        exact, pick = grounding_scores(scored, head, heldout, target_loss=target_loss)
        out[name] = {"exact": exact, "pick": pick}
    return out


def visual_tokens(model, frames: np.ndarray, *, patches: bool) -> torch.Tensor:
    """What the LLM's projector receives for ``frames`` (T, H, W, 3) uint8: ``(T, tokens, C)``; with ``patches``
    the unmerged patches, each with its own position embedding at the preset's centroid scale."""
    from vrshq.model.token_merging import grid_position_embedding

    vision = model.vision
    with torch.no_grad():
        features = vision.encode_patches(vision.preprocess(torch.from_numpy(frames)))
        if not patches:
            return vision.merge(features)
        grid = vision.cfg.image_size // vision.cfg.patch_size
        scale = vision.cfg.merge.centroid_position_scale
        return features + scale * grid_position_embedding(grid, features.shape[-1]).to(features)


class ObjectCentreProbe(torch.nn.Module):
    """Oracle-query attention over one frame's tokens -> the queried object's centre (y, x) / frame size."""

    def __init__(self, token_dim: int, queries: int, width: int = 128) -> None:
        super().__init__()
        self.query = torch.nn.Embedding(queries, width)
        self.key = torch.nn.Linear(token_dim, width)
        self.value = torch.nn.Linear(token_dim, width)
        self.head = torch.nn.Sequential(torch.nn.Linear(2 * width, width), torch.nn.GELU(), torch.nn.Linear(width, 2))

    def forward(self, tokens: torch.Tensor, query_ids: torch.Tensor) -> torch.Tensor:
        q = self.query(query_ids)
        weights = torch.softmax((self.key(tokens) @ q[:, :, None]).squeeze(-1) / q.shape[-1] ** 0.5, dim=-1)
        pooled = (weights[:, :, None] * self.value(tokens)).sum(1)
        return self.head(torch.cat([pooled, q], dim=-1))


#: How a rule scores an object's motion from its centre track (T, 2): the mean |step| between frames (exact on
#: true tracks, but every step adds the noise of two centres), or the spread of the centres over the frames (their
#: std, summed over y and x; it averages the noise down: with Gaussian noise of 4 px per axis on true centres of
#: 8 frames, "step" answers 0.58 / 0.79 and "spread" 0.81 / 0.93 of the never-moves / fastest questions).
SPEED_RULES = {
    "step": lambda track: np.abs(np.diff(track, axis=1)).sum(-1).mean(1),
    "spread": lambda track: track.std(axis=1).sum(-1),
}


def speed_rule_accuracy(videos, centres: list[np.ndarray], rule: str = "step") -> dict[str, float]:
    """Share of "never moves" / "fastest" expressions whose target is the object of least / most motion (by
    ``SPEED_RULES[rule]``) of its centre track; ``centres[i]`` is (objects, T, 2) for ``videos[i]``."""
    hits: dict[str, list[bool]] = {"static": [], "fastest": []}
    for video, track in zip(videos, centres):
        speed = SPEED_RULES[rule](track)
        for expression in video.expressions:
            if expression.kind in hits:
                pick = np.argmin(speed) if expression.kind == "static" else np.argmax(speed)
                hits[expression.kind].append(int(pick) == expression.obj_ids[0])
    return {kind: float(np.mean(h)) if h else float("nan") for kind, h in hits.items()}


def motion_from_tokens(model, *, train_videos: int, heldout_videos: int, steps: int, patches: bool) -> dict:
    """Measurement 4 (module docstring): the centre probe's held-out R^2 and RMSE, and the speed rule's accuracy
    on the probe's centres and on the true ones."""
    from vrshq.data import COLOURS, SHAPES, SIZES, generate_synthetic_video

    triples = {t: i for i, t in enumerate(itertools.product(SIZES, COLOURS, SHAPES))}
    gen = torch.Generator().manual_seed(0)

    def rows(stream: int, count: int):
        videos, tokens, queries, centres, visible = [], [], [], [], []
        for i in range(count):
            video = generate_synthetic_video(np.random.default_rng([0, stream, i]), num_frames=16, height=64, width=64)
            frame_tokens = visual_tokens(model, video.frames, patches=patches)
            seen = video.object_masks.reshape(len(video.objects), video.frames.shape[0], -1).any(-1)
            size = video.frames.shape[1]
            for o in video.objects:
                tokens.append(frame_tokens)
                queries.append(torch.full((len(frame_tokens),), triples[(o.size, o.colour, o.shape)]))
                centres.append(torch.from_numpy(o.centers / size).float())
                visible.append(torch.from_numpy(seen[o.obj_id]))
            videos.append(video)
        return videos, torch.cat(tokens), torch.cat(queries), torch.cat(centres), torch.cat(visible)

    _, x, q, y, v = rows(7, train_videos)
    videos, xh, qh, yh, vh = rows(8, heldout_videos)
    probe = ObjectCentreProbe(x.shape[-1], len(triples))
    optimizer = torch.optim.AdamW(probe.parameters(), lr=2e-3)
    x, q, y = x[v], q[v], y[v]  # hidden frames have no centre to see
    for _ in range(steps):
        idx = torch.randint(0, len(x), (512,), generator=gen)
        loss = F.mse_loss(probe(x[idx], q[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = probe(xh, qh)
    target, guess = yh[vh], predicted[vh]
    r2 = 1 - ((guess - target) ** 2).sum() / ((target - target.mean(0)) ** 2).sum()
    size = videos[0].frames.shape[1]
    tracks, true_tracks, start = [], [], 0
    for video in videos:
        n, t = len(video.objects), video.frames.shape[0]
        tracks.append(predicted[start:start + n * t].reshape(n, t, 2).numpy() * size)
        true_tracks.append(np.stack([o.centers for o in video.objects]))
        start += n * t
    return {"centre_r2": float(r2), "centre_rmse_px": float(size * ((guess - target) ** 2).mean().sqrt()),
            "speed_rule_probe": speed_rule_accuracy(videos, tracks),
            "spread_rule_probe": speed_rule_accuracy(videos, tracks, "spread"),
            "speed_rule_true_centres": speed_rule_accuracy(videos, true_tracks),
            "spread_rule_true_centres": speed_rule_accuracy(videos, true_tracks, "spread")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="model folder (research.learnability's model/, or checkpoints/tiny-synthetic)")
    parser.add_argument("--videos", type=int, default=64, help="held-out videos of the referring and landing "
                                                               "measurements")
    parser.add_argument("--image-videos", type=int, default=40, help="videos (4 frames each) of the image probe")
    parser.add_argument("--tak-train-clips", type=int, default=384)
    parser.add_argument("--tak-heldout-videos", type=int, default=96)
    parser.add_argument("--motion-train-videos", type=int, default=2000)
    parser.add_argument("--motion-heldout-videos", type=int, default=150)
    parser.add_argument("--motion-steps", type=int, default=3000)
    parser.add_argument("--motion-tokens", choices=("merged", "patches"), default="merged",
                        help="what the centre probe reads: the LLM's merged tokens, or the unmerged patches")
    parser.add_argument("--vision-folder", help="a stage-V folder (research.learnability's vision_pretrain/) to load "
                                                "into the tower first")
    parser.add_argument("--grounding-folder",
                        help="the run's stage G folder (research.learnability's grounding_pretrain/): adds the retention "
                             "measurement")
    parser.add_argument("--only", choices=("tak", "image", "referring", "landing", "motion", "retention"),
                        help="one measurement only")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.only == "retention" and not args.grounding_folder:
        parser.error("--only retention needs --grounding-folder")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:  # the loader's config wants an output folder
        model = build_model(InferenceConfig(out=scratch, manifest="m.parquet", checkpoint=args.model, device="cpu"))
    model = model.float().eval()
    if args.vision_folder:
        from research.vision_pretrain import load_pretrained_tower

        load_pretrained_tower(model.vision, args.vision_folder)
    report = {}
    head = fit_tak_head(model, train_clips=args.tak_train_clips) if args.only in (None, "tak", "landing") else None
    if args.only in (None, "tak"):
        report["tak_grounding"] = tak_grounding(model, head, heldout_videos=args.tak_heldout_videos)
        print(json.dumps({"tak_grounding": report["tak_grounding"]}), flush=True)
    if args.only in (None, "image"):
        report["image_cells"] = cell_probe_accuracy(*image_feature_cells(model, args.image_videos))
        print(json.dumps({"image_cells": report["image_cells"]}), flush=True)
    if args.only in (None, "referring"):
        report["referring"] = referring_by_attributes(model, args.videos)
        print(json.dumps({"referring": report["referring"]}), flush=True)
    if args.only in (None, "landing"):
        report["landing"] = keyframe_landing(model, head, args.videos)
        print(json.dumps({"landing": report["landing"]}), flush=True)
    if args.grounding_folder and args.only in (None, "retention"):
        report["retention"] = grounding_retention(model, args.grounding_folder, heldout_videos=args.tak_heldout_videos)
        print(json.dumps({"retention": report["retention"]}), flush=True)
    if args.only in (None, "motion"):
        report["motion"] = motion_from_tokens(model, train_videos=args.motion_train_videos,
                                              heldout_videos=args.motion_heldout_videos, steps=args.motion_steps,
                                              patches=args.motion_tokens == "patches")
        print(json.dumps({"motion": report["motion"]}), flush=True)


if __name__ == "__main__":
    main()
