"""The official-name converter on hand-built state dicts (names from SitongGong/VRS-HQ's module tree)."""

from __future__ import annotations

import json

import pytest
import torch

from vrshq.checkpoint.weight_files import read_state_dict
from vrshq.checkpoint.official_names import (
    UnknownOfficialKeysError,
    convert_official_state_dict,
    merge_lora_weights,
)

# Official key -> the vrshq key it must become. Written out by hand (not derived from the rules).
_EXPECTED = {
    "model.embed_tokens.weight": "mllm.llm.model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight": "mllm.llm.model.layers.0.self_attn.q_proj.weight",
    "model.layers.31.mlp.down_proj.weight": "mllm.llm.model.layers.31.mlp.down_proj.weight",
    "model.layers.7.input_layernorm.weight": "mllm.llm.model.layers.7.input_layernorm.weight",
    "model.norm.weight": "mllm.llm.model.norm.weight",
    "lm_head.weight": "mllm.llm.lm_head.weight",
    "model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight":
        "vision.vision_tower.embeddings.patch_embedding.weight",
    "model.vision_tower.vision_tower.vision_model.encoder.layers.23.self_attn.out_proj.bias":
        "vision.vision_tower.encoder.layers.23.self_attn.out_proj.bias",
    "model.vision_tower.vision_tower.vision_model.post_layernorm.weight":
        "vision.vision_tower.post_layernorm.weight",
    "model.mm_projector.weight": "vision.projector.weight",
    "model.mm_projector.bias": "vision.projector.bias",
    "model.text_hidden_fcs.0.0.weight": "seg_head.mlp.0.weight",
    "model.text_hidden_fcs.0.0.bias": "seg_head.mlp.0.bias",
    "model.text_hidden_fcs.0.2.weight": "seg_head.mlp.2.weight",
    "model.text_hidden_fcs.0.2.bias": "seg_head.mlp.2.bias",
    "model.visual_model.image_encoder.trunk.blocks.0.attn.qkv.weight":
        "sam2.sam2.image_encoder.trunk.blocks.0.attn.qkv.weight",
    "model.visual_model.sam_mask_decoder.conv_s0.weight": "sam2.sam2.sam_mask_decoder.conv_s0.weight",
    "model.visual_model.maskmem_tpos_enc": "sam2.sam2.maskmem_tpos_enc",
    "model.visual_model.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix":
        "sam2.sam2.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
    "clip_model.logit_scale": "anchor.clip_model.logit_scale",
    "clip_model.text_model.embeddings.token_embedding.weight":
        "anchor.clip_model.text_model.embeddings.token_embedding.weight",
    "clip_model.visual_projection.weight": "anchor.clip_model.visual_projection.weight",
}


def _official(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(3, 4, generator=g) for k in _EXPECTED}


def test_every_kind_of_official_key_maps_to_its_vrshq_name():
    sd = _official()
    out = convert_official_state_dict(sd)
    assert set(out) == set(_EXPECTED.values())
    for official, ours in _EXPECTED.items():
        assert out[ours] is sd[official]


@pytest.mark.parametrize("wrapper", ["base_model.model.", "module.", "module.base_model.model."])
def test_wrapper_prefixes_are_removed(wrapper):
    sd = {wrapper + k: v for k, v in _official().items()}
    out = convert_official_state_dict(sd)
    assert set(out) == set(_EXPECTED.values())


def test_declared_buffers_are_dropped_and_unknown_keys_reported():
    sd = _official()
    sd["model.layers.3.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    sd["model.vision_tower.vision_tower.vision_model.embeddings.position_ids"] = torch.arange(5)[None]
    sd["clip_model.text_model.embeddings.position_ids"] = torch.arange(5)[None]
    assert set(convert_official_state_dict(sd)) == set(_EXPECTED.values())
    sd["model.some_new_head.weight"] = torch.ones(1)
    sd["model.text_hidden_fcs.1.0.weight"] = torch.ones(1)  # a second MLP does not exist in vrshq
    with pytest.raises(UnknownOfficialKeysError) as info:
        convert_official_state_dict(sd)
    assert info.value.keys == ("model.some_new_head.weight", "model.text_hidden_fcs.1.0.weight")
    assert "model.some_new_head.weight" in str(info.value)
    kept = convert_official_state_dict(sd, unknown="keep")
    assert "model.some_new_head.weight" in kept and "mllm.llm.lm_head.weight" in kept


def test_unmerged_lora_is_folded_with_alpha_over_r():
    # peft 0.4 naming (training checkpoint of the official run): X.weight + X.lora_A.default.weight ...
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # (out 3, in 2)
    a = torch.tensor([[1.0, 0.0]])  # (r 1, in 2)
    b = torch.tensor([[1.0], [0.0], [2.0]])  # (out 3, r 1)
    sd = {
        "base_model.model.model.layers.0.self_attn.q_proj.weight": w,
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight": a,
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight": b,
        "base_model.model.lm_head.weight": torch.zeros(2, 2),
    }
    out = convert_official_state_dict(sd, lora_alpha=16)
    # scale = alpha / r = 16; B @ A = [[1,0],[0,0],[2,0]]
    expected = torch.tensor([[17.0, 2.0], [3.0, 4.0], [37.0, 6.0]])
    assert set(out) == {"mllm.llm.model.layers.0.self_attn.q_proj.weight", "mllm.llm.lm_head.weight"}
    torch.testing.assert_close(out["mllm.llm.model.layers.0.self_attn.q_proj.weight"], expected)
    # newer peft naming: X.base_layer.weight and adapter name dropped by get_peft_model_state_dict
    sd2 = {"model.layers.0.self_attn.v_proj.base_layer.weight": w,
           "model.layers.0.self_attn.v_proj.lora_A.weight": a,
           "model.layers.0.self_attn.v_proj.lora_B.weight": b}
    out2 = convert_official_state_dict(sd2, lora_alpha=8)
    torch.testing.assert_close(out2["mllm.llm.model.layers.0.self_attn.v_proj.weight"],
                               torch.tensor([[9.0, 2.0], [3.0, 4.0], [21.0, 6.0]]))


def test_broken_lora_pairs_raise():
    with pytest.raises(ValueError, match="no base weight"):
        merge_lora_weights({"x.lora_A.weight": torch.ones(1, 2), "x.lora_B.weight": torch.ones(3, 1)})
    with pytest.raises(ValueError, match="1 lora_A but 0 lora_B"):
        merge_lora_weights({"x.weight": torch.ones(3, 2), "x.lora_A.weight": torch.ones(1, 2)})
    with pytest.raises(ValueError, match="do not fit"):
        merge_lora_weights({"x.weight": torch.ones(3, 2), "x.lora_A.weight": torch.ones(1, 5),
                            "x.lora_B.weight": torch.ones(3, 1)})


def test_official_hf_pickle_shards_are_read_weights_only(tmp_path):
    """The release layout: pytorch_model-0000i-of-00002.bin + pytorch_model.bin.index.json."""
    sd = _official()
    keys = sorted(sd)
    shards = {"pytorch_model-00001-of-00002.bin": keys[:5], "pytorch_model-00002-of-00002.bin": keys[5:]}
    for name, names in shards.items():
        torch.save({k: sd[k] for k in names}, tmp_path / name)
    index = {"metadata": {"total_size": 0}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    read = read_state_dict(str(tmp_path))
    assert set(read) == set(sd) and all(torch.equal(read[k], sd[k]) for k in sd)
    assert set(convert_official_state_dict(read)) == set(_EXPECTED.values())
