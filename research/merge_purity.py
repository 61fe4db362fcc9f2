"""How well does the first DPC-KNN merge level keep a video's objects apart, and where does it put them?

Why: the LLM learns motion ("which shape never moves?") only as well as the merged tokens say where each object is
in each frame; a cluster that mixes a shape with the background around it moves its centroid off the shape
(docs/research/learnability.md, "Finer patches"). For every visible object and frame of held-out synthetic videos this
takes the first-level cluster that holds most of the object's patches (a patch is the object's when the object covers
half of it) and reports:

* ``pure``: the share of that cluster's patches that are the object's (mean);
* ``centre_error_px``: the distance from the cluster's centroid (mean patch centre) to the object's true centre
  (median), and ``within_3px``, the share within 3 px.

The features clustered are the tower's (``--layer``, the preset's by default) or, with ``--pixels``, each patch's
raw normalised pixels. The tower is a random-init one of ``--preset``, or the stage-V tower of ``--vision-folder``.

    python -m research.merge_purity --preset learn-256-pos-k2
    python -m research.merge_purity --preset learn-256-pos-p4 --vision-folder out/p4/vision_pretrain
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import torch
import torch.nn.functional as F

from vrshq.data import generate_synthetic_video
from vrshq.model.token_merging import dpc_knn_cluster
from vrshq.vision_config import effective_knn_k


def patch_features(vision, frames: np.ndarray, *, pixels: bool) -> torch.Tensor:
    """``(T, patches, C)``: the tower's features at its ``select_layer``, or each patch's normalised pixels."""
    with torch.no_grad():
        image = vision.preprocess(torch.from_numpy(frames))
        if not pixels:
            return vision.encode_patches(image).float()
        p = vision.cfg.patch_size
        grid = vision.cfg.image_size // p
        return image.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(len(frames), grid * grid, -1)


def merge_purity(vision, *, videos: int, pixels: bool = False, seed: int = 0, stream: int = 8) -> dict[str, float]:
    """The module docstring's measures over ``videos`` synthetic videos (64x64, 16 frames) of ``stream``."""
    merge = vision.cfg.merge
    grid = vision.cfg.image_size // vision.cfg.patch_size
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    pure, error = [], []
    for i in range(videos):
        video = generate_synthetic_video(np.random.default_rng([seed, stream, i]), num_frames=16, height=64, width=64)
        labels = dpc_knn_cluster(patch_features(vision, video.frames, pixels=pixels),
                                 num_clusters=merge.cluster_counts[0],
                                 k=effective_knn_k(merge.knn_k[0], merge.cluster_counts[0])).labels.numpy()
        size = video.frames.shape[1]
        masks = torch.from_numpy(video.object_masks).float().flatten(0, 1)[:, None]  # (objects * T, 1, H, W)
        cover = F.adaptive_avg_pool2d(masks, grid).reshape(len(video.objects), len(video.frames), -1).numpy()
        for obj in video.objects:
            for t in range(len(video.frames)):
                own = cover[obj.obj_id, t] >= 0.5
                if not own.any():
                    continue  # hidden in this frame
                ids, counts = np.unique(labels[t][own], return_counts=True)
                members = labels[t] == ids[counts.argmax()]
                pure.append((own & members).sum() / members.sum())
                centre = (np.array([rows[members].mean(), cols[members].mean()]) + 0.5) * size / grid
                error.append(float(np.hypot(*(centre - obj.centers[t]))))
    return {"pure": float(np.mean(pure)), "centre_error_px": float(np.median(error)),
            "within_3px": float(np.mean(np.asarray(error) < 3)), "object_frames": len(pure)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="learn-256-pos-k2", help="model preset whose tower and merge are used")
    parser.add_argument("--vision-folder", help="a stage-V folder (research.learnability's vision_pretrain/) to load")
    parser.add_argument("--layer", type=int, help="tower hidden state to cluster (default: the preset's)")
    parser.add_argument("--pixels", action="store_true", help="cluster each patch's raw pixels instead")
    parser.add_argument("--videos", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from motion_reasoning_probe import preset_tower

    vision = preset_tower(args.preset, args.vision_folder)
    if args.layer is not None:
        vision.cfg = dataclasses.replace(vision.cfg, select_layer=args.layer)
    report = merge_purity(vision, videos=args.videos, pixels=args.pixels)
    print(json.dumps({"preset": args.preset, "vision_folder": args.vision_folder, "layer": vision.cfg.select_layer,
                      "pixels": args.pixels, **{k: round(v, 3) for k, v in report.items()}}), flush=True)


if __name__ == "__main__":
    main()
