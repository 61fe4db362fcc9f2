"""Vision / anchor configs: presets carry the method's numbers, validation names the field."""

from __future__ import annotations

import dataclasses

import pytest

from vrshq.vision_config import (
    AnchorConfig,
    ClipImageConfig,
    TokenMergeConfig,
    VisionTowerConfig,
    clip_vit_l14_224_tower,
    clip_vit_l14_336_anchor,
    tiny_anchor,
    tiny_vision_tower,
)


def test_real_tower_preset_matches_method():
    cfg = clip_vit_l14_224_tower()
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (1024, 24, 16)
    assert (cfg.patch_size, cfg.image_size, cfg.select_layer, cfg.projector_out_dim) == (14, 224, -2, 4096)
    assert cfg.num_patches == 256
    assert cfg.merge.cluster_counts == (64, 32, 16) and cfg.merge.knn_k == (5, 3, 3)
    assert cfg.tokens_per_frame == 112
    assert (cfg.image.shortest_edge, cfg.image.crop_size) == (224, 224)
    assert cfg.weights_path is None
    assert clip_vit_l14_224_tower(select_layer=-1, projector_out_dim=5120).projector_out_dim == 5120


def test_real_anchor_preset_matches_method():
    cfg = clip_vit_l14_336_anchor(weights_path="/models/clip336")
    assert (cfg.vision_hidden_size, cfg.vision_num_hidden_layers, cfg.vision_patch_size) == (1024, 24, 14)
    assert (cfg.vision_image_size, cfg.image.shortest_edge, cfg.image.crop_size) == (336, 336, 336)
    assert (cfg.text_hidden_size, cfg.text_num_hidden_layers, cfg.projection_dim) == (768, 12, 768)
    assert cfg.max_frames == 12 and cfg.text_max_length == 77 == cfg.text_max_position_embeddings
    assert cfg.resolved_tokenizer_path == "/models/clip336"
    assert clip_vit_l14_336_anchor(weights_path="/w", tokenizer_path="/t").resolved_tokenizer_path == "/t"


def test_tiny_presets():
    tower = tiny_vision_tower()
    assert (tower.hidden_size, tower.num_hidden_layers, tower.num_patches, tower.tokens_per_frame) == (32, 2, 64, 28)
    exact = tiny_vision_tower(image_size=32, patch_size=2, cluster_counts=(64, 32, 16))
    assert exact.num_patches == 256 and exact.tokens_per_frame == 112
    anchor = tiny_anchor(max_frames=6, text_max_length=16)
    assert anchor.max_frames == 6 and anchor.text_max_length == 16 and anchor.text_eos_token_id != 2


def test_frozen():
    cfg = tiny_vision_tower()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.select_layer = -1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"cluster_counts": (64, 32), "knn_k": (5, 3, 3)}, ValueError, "same length"),
        ({"cluster_counts": (16, 32), "knn_k": (5, 3)}, ValueError, r"cluster_counts\[1\]=32"),
        ({"cluster_counts": [64], "knn_k": (5,)}, TypeError, "tuple"),
        ({"cluster_counts": (0,), "knn_k": (5,)}, ValueError, ">= 1"),
    ],
)
def test_merge_config_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        TokenMergeConfig(**kwargs)


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"image_size": 50}, ValueError, "multiple of patch_size"),
        ({"num_attention_heads": 3}, ValueError, "divisible"),
        ({"select_layer": 3}, ValueError, "select_layer=3 is out of range"),
        ({"select_layer": -4}, ValueError, "out of range"),
        ({"merge": TokenMergeConfig(cluster_counts=(128,), knn_k=(5,))}, ValueError, "receives only 64 tokens"),
        ({"image": ClipImageConfig(shortest_edge=64, crop_size=64)}, ValueError, "must equal image_size"),
        ({"weights_path": ""}, TypeError, "weights_path"),
        ({"hidden_size": True}, TypeError, "hidden_size"),
    ],
)
def test_tower_config_validation(changes, error, match):
    with pytest.raises(error, match=match):
        dataclasses.replace(tiny_vision_tower(), **changes)


def test_select_layer_bounds_are_inclusive():
    base = tiny_vision_tower()  # 2 layers -> 3 hidden states
    assert dataclasses.replace(base, select_layer=-3).select_layer == -3
    assert dataclasses.replace(base, select_layer=2).select_layer == 2


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"text_max_length": 78}, ValueError, "text_max_length=78 exceeds"),
        ({"max_frames": 0}, ValueError, "max_frames must be >= 1"),
        ({"vision_image_size": 30}, ValueError, "multiple of"),
        ({"image": ClipImageConfig(shortest_edge=224, crop_size=224)}, ValueError, "vision_image_size"),
        ({"text_hidden_size": 31}, ValueError, "divisible"),
        ({"tokenizer_path": 3}, TypeError, "tokenizer_path"),
    ],
)
def test_anchor_config_validation(changes, error, match):
    with pytest.raises(error, match=match):
        dataclasses.replace(tiny_anchor(), **changes)


def test_default_instances_are_the_real_sizes():
    assert VisionTowerConfig() == clip_vit_l14_224_tower()
    assert AnchorConfig() == clip_vit_l14_336_anchor()


def test_select_layer_read_from_checkpoint_config():
    from vrshq.vision_config import chat_univi_select_layer

    assert chat_univi_select_layer({"mm_vision_select_layer": -1, "hidden_size": 4096}) == -1
    layer = chat_univi_select_layer({"mm_vision_select_layer": -2})
    assert clip_vit_l14_224_tower(select_layer=layer).select_layer == -2
    with pytest.raises(KeyError, match="mm_vision_select_layer"):
        chat_univi_select_layer({"hidden_size": 4096})
    with pytest.raises(TypeError, match="int"):
        chat_univi_select_layer({"mm_vision_select_layer": "-2"})


def test_centroid_position_scale_is_validated_and_old_configs_load_without_it():
    from vrshq.checkpoint.config_io import config_from_dict, config_to_dict
    from vrshq.vision_config import TokenMergeConfig

    with pytest.raises(ValueError, match="centroid_position_scale"):
        TokenMergeConfig(centroid_position_scale=-1.0)
    cfg = TokenMergeConfig(cluster_counts=(16, 8, 4), knn_k=(5, 3, 3), centroid_position_scale=1.0)
    assert config_from_dict(TokenMergeConfig, config_to_dict(cfg)) == cfg
    old = {k: v for k, v in config_to_dict(cfg).items() if k != "centroid_position_scale"}
    assert config_from_dict(TokenMergeConfig, old).centroid_position_scale == 0.0  # checkpoints written before it
