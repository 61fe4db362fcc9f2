"""The vrshq-7b preset on the meta device has the official parameter count, part by part.

Shapes must match the released checkpoint tensor for tensor, so the counts are derived by hand from the
official architectures (method §0-§6) rather than read back from the model.
"""

from __future__ import annotations

import torch

from benchmarks.param_count import count_parameters_by_part
from vrshq.builders import build_vrshq, vrshq_7b_config


def _llama(vocab: int, h: int, inter: int, layers: int) -> int:
    per_layer = 4 * h * h + 3 * h * inter + 2 * h  # q, k, v, o; gate, up, down; two RMSNorms
    return vocab * h + layers * per_layer + h + vocab * h  # embed, layers, final norm, untied lm_head


def _clip_vit(h: int, inter: int, layers: int, patch: int, image: int) -> int:
    positions = (image // patch) ** 2 + 1
    embeddings = h + 3 * patch * patch * h + positions * h  # class, patch conv (no bias), positions
    per_layer = 4 * (h * h + h) + 2 * 2 * h + (h * inter + inter) + (inter * h + h)
    return embeddings + 2 * h + layers * per_layer + 2 * h  # pre-LN, layers, post-LN


def test_vrshq_7b_meta_parameter_count_by_part():
    model = build_vrshq(vrshq_7b_config(), device=torch.device("meta"))
    assert all(p.is_meta for p in model.parameters())
    counts = count_parameters_by_part(model)
    clip_l14_224 = _clip_vit(1024, 4096, 24, 14, 224)
    assert clip_l14_224 == 303_179_776  # CLIPVisionModel of openai/clip-vit-large-patch14
    text_tower = 49408 * 768 + 77 * 768 + 12 * (4 * (768 * 768 + 768) + 4 * 768 + 2 * 768 * 3072 + 3072 + 768) + 2 * 768
    clip336 = _clip_vit(1024, 4096, 24, 14, 336) + text_tower + 1024 * 768 + 768 * 768 + 1  # + projections, logit scale
    expected = {
        "llm": _llama(32000 + 2, 4096, 11008, 32),  # LLaMA-7B with [SEG], [TAK]
        "clip_tower": clip_l14_224,
        "projector": 1024 * 4096 + 4096,
        "seg_head": (4096 * 4096 + 4096) + (4096 * 256 + 256),
        "sam2": 224_430_130,  # SAM 2.0 hiera_large (224.4M, SAM2 model card) with the VRS-HQ flags
        "clip336_anchor": clip336,
        "other": 0,
    }
    assert expected["llm"] == 6_738_432_000 and clip336 == 427_944_193
    expected["total"] = sum(expected.values())
    assert counts == expected
