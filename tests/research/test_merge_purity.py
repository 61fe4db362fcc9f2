"""research/merge_purity.py: on raw pixels of 4 px patches the first merge level isolates the shapes, and the
measure tells that apart from a merge that ignores the image."""
from __future__ import annotations

import dataclasses
import importlib

import torch


def test_pixel_clusters_of_4px_patches_find_the_shapes_and_random_labels_do_not():
    purity = importlib.import_module("research.merge_purity")
    probe = importlib.import_module("research.motion_reasoning_probe")
    torch.manual_seed(0)
    vision = probe.preset_tower("learn-256-pos-p4")
    on_pixels = purity.merge_purity(vision, videos=3, pixels=True)
    assert on_pixels["object_frames"] > 50
    assert on_pixels["pure"] > 0.75 and on_pixels["centre_error_px"] < 2.5, on_pixels
    # a merge whose features carry nothing of the image (every patch alike: one centre takes all) finds nothing
    vision.cfg = dataclasses.replace(vision.cfg, select_layer=0)
    blind = purity.merge_purity(_Blind(vision), videos=3)
    assert blind["pure"] < 0.2 and blind["centre_error_px"] > 5, blind


class _Blind:
    """A tokenizer whose patch features are all equal."""

    def __init__(self, vision) -> None:
        self.cfg, self._vision = vision.cfg, vision

    def preprocess(self, frames):
        return self._vision.preprocess(frames)

    def encode_patches(self, image):
        return torch.zeros(image.shape[0], (self.cfg.image_size // self.cfg.patch_size) ** 2, 8)
