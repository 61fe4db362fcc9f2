"""Configs, presets and `build_vrshq` (tiny on CPU, vrshq-7b on the meta device)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vrshq.builders import build_vrshq, tiny_config, vrshq_7b_config
from vrshq.config import LlmConfig, LossConfig, MethodConfig, TrainableConfig, VrshqConfig
from vrshq.model.tokenizer import build_tiny_tokenizer


def test_method_and_loss_defaults_are_the_official_values():
    m, loss, tr = MethodConfig(), LossConfig(), TrainableConfig()
    assert (m.tda_alpha, m.max_frames, m.train_window, m.tks_sam_weight, m.tks_token_weight) == (0.1, 12, 3, 1.0, 1.0)
    assert (m.seg_embed_dim, m.mask_threshold, m.train_num_frames) == (256, 0.0, (8, 12))
    assert (loss.ce_weight, loss.bce_weight, loss.dice_weight, loss.object_weight) == (1.0, 2.0, 0.5, 0.0)
    assert (loss.dice_scale, loss.dice_eps) == (1000.0, 1e-6)
    assert (tr.lora_r, tr.lora_alpha, tr.lora_dropout, tr.lora_target_modules) == (8, 16, 0.05, ("q_proj", "v_proj"))


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: MethodConfig(tda_alpha=-1.0), "tda_alpha"),
        (lambda: MethodConfig(max_frames=1), "max_frames"),
        (lambda: MethodConfig(train_num_frames=(2, 12)), "train_num_frames"),
        (lambda: MethodConfig(tks_sam_weight=0.0, tks_token_weight=0.0), "both be 0"),
        (lambda: LossConfig(bce_weight=float("nan")), "bce_weight"),
        (lambda: TrainableConfig(mode="some"), "mode"),
        (lambda: LlmConfig(hidden_size=30, num_attention_heads=4), "divisible"),
        (lambda: LlmConfig(tokenizer="tiny", tokenizer_path="/x"), "tokenizer_path"),
    ],
)
def test_config_validation(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_vrshq_config_cross_checks():
    cfg = tiny_config()
    with pytest.raises(ValueError, match="projector_out_dim"):
        dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, hidden_size=32))
    with pytest.raises(ValueError, match="max_frames"):
        dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, max_frames=8))
    with pytest.raises(TypeError, match="Sam2Config"):
        VrshqConfig(vision=cfg.vision, anchor=cfg.anchor, llm=cfg.llm, sam2=None)


def test_presets():
    big = vrshq_7b_config()
    assert big.name == "vrshq-7b"
    assert (big.llm.hidden_size, big.llm.num_hidden_layers, big.llm.vocab_size) == (4096, 32, 32000)
    assert big.vision.tokens_per_frame == 112 and big.vision.projector_out_dim == 4096
    assert big.sam2.image_size == 1024 and big.method == MethodConfig()
    tiny = tiny_config()
    assert tiny.llm.vocab_size == len(build_tiny_tokenizer())
    assert tiny.method.seg_embed_dim == 64


def test_build_tiny_module_tree_and_names():
    torch.manual_seed(0)
    model = build_vrshq(tiny_config(trainable="none"))
    names = [n for n, _ in model.named_parameters()]
    prefixes = {n.split(".")[0] for n in names}
    assert prefixes == {"vision", "anchor", "mllm", "seg_head", "sam2"}
    assert "mllm.llm.model.layers.0.self_attn.q_proj.weight" in names
    assert "mllm.llm.lm_head.weight" in names and "seg_head.mlp.2.weight" in names
    assert any(n.startswith("vision.vision_tower.") for n in names)
    assert any(n.startswith("vision.projector.") for n in names)
    assert any(n.startswith("sam2.sam2.sam_mask_decoder.") for n in names)
    assert not any(p.requires_grad for p in model.parameters())
    tok = model.tokenizer
    assert model.mllm.llm.get_input_embeddings().num_embeddings == len(tok)
    assert model.mllm.token_ids.seg_token_id == tok.convert_tokens_to_ids("[SEG]")
    assert not model.training


def test_build_rejects_a_tokenizer_bigger_than_the_vocabulary():
    cfg = tiny_config()
    small = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, vocab_size=10))
    with pytest.raises(ValueError, match="vocab_size"):
        build_vrshq(small)


def test_vrshq_7b_builds_on_meta_with_the_official_parameter_count():
    model = build_vrshq(vrshq_7b_config(), device=torch.device("meta"))
    assert {p.device.type for p in model.parameters()} == {"meta"}
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    assert counts["mllm"] == 6_738_415_616 + 2 * 2 * 4096  # LLaMA-7B + 2 rows in embed_tokens and lm_head
    assert counts["seg_head"] == 4096 * 4096 + 4096 + 4096 * 256 + 256
    assert counts["vision"] == 303_179_776 + 1024 * 4096 + 4096  # CLIP ViT-L/14 vision model + projector
    assert counts["sam2"] == 224_430_130  # SAM 2.0 Hiera-L
    assert counts["anchor"] == 427_944_193  # CLIP ViT-L/14-336 (text + vision)
    assert sum(counts.values()) == 7_716_014_643
    assert model.mllm.token_ids.seg_token_id == 32000 and model.mllm.token_ids.tak_token_id == 32001
    with pytest.raises(RuntimeError, match="no tokenizer"):
        model.segment_video(torch.zeros(2, 8, 8, 3, dtype=torch.uint8), ["x"])
