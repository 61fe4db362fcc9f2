"""Checkpoints of the real VrshqModel tree (tiny preset): round trips, LoRA flows, official names."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from safetensors.torch import save_file

from vrshq.builders import build_vrshq, tiny_config
from vrshq.checkpoint.load import load_state_dict_into, load_vrshq_checkpoint, load_vrshq_config, load_vrshq_tokenizer
from vrshq.checkpoint.save import save_vrshq_checkpoint
from vrshq.checkpoint.weight_files import CONFIG_NAME, CheckpointMismatchError, read_state_dict
from vrshq.checkpoint.official_names import convert_official_state_dict, load_official_checkpoint


@pytest.fixture(scope="module")
def tiny_models():
    """(plain, lora): the tiny preset with everything trainable and with the official LoRA recipe."""
    torch.manual_seed(0)
    plain = build_vrshq(tiny_config(trainable="all"))
    torch.manual_seed(1)
    lora = build_vrshq(tiny_config(trainable="lora"))
    return plain, lora


def _perturbed(model, seed: int):
    """A copy of ``model`` with every floating tensor changed, so that a load is visible."""
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in other.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=g))
    return other


def _assert_same(a, b, *, keys=None):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in keys if keys is not None else sa:
        assert torch.equal(sa[k], sb[k]), k


def test_tiny_round_trip_with_config_and_tokenizer(tiny_models, tmp_path):
    model, _ = tiny_models
    uri = str(tmp_path / "tiny")
    saved = save_vrshq_checkpoint(model, uri)
    assert saved.content == "full" and saved.num_tensors == len(model.state_dict())
    meta = json.loads((tmp_path / "tiny" / CONFIG_NAME).read_text())
    assert meta["config"]["llm"]["num_hidden_layers"] == 2 and meta["content"] == "full"
    assert load_vrshq_config(uri) == model.cfg
    tok = load_vrshq_tokenizer(uri)
    text = "the red circle [SEG] [TAK]"
    assert tok(text).input_ids == model.tokenizer(text).input_ids
    other = _perturbed(model, 3)
    assert not torch.equal(other.seg_head.mlp[0].weight, model.seg_head.mlp[0].weight)
    load_vrshq_checkpoint(other, uri)
    _assert_same(model, other)


def test_tiny_shape_mismatch_names_the_key(tiny_models, tmp_path):
    model, _ = tiny_models
    save_vrshq_checkpoint(model, str(tmp_path / "tiny"))
    torch.manual_seed(0)
    wider = build_vrshq(tiny_config(trainable="all", hidden_size=32))
    with pytest.raises(CheckpointMismatchError) as info:
        load_vrshq_checkpoint(wider, str(tmp_path / "tiny"))
    assert ("seg_head.mlp.0.weight", (64, 64), (32, 32)) in info.value.mismatched
    assert "seg_head.mlp.0.weight: checkpoint [64, 64] vs model [32, 32]" in str(info.value)


def test_lora_training_writes_trainable_and_inference_loads_base_plus_trainable(tiny_models, tmp_path):
    plain, lora = tiny_models
    base_uri, step_uri = str(tmp_path / "base"), str(tmp_path / "step")
    save_vrshq_checkpoint(plain, base_uri)  # plain names (no LoRA)
    trained = copy.deepcopy(lora)
    load_vrshq_checkpoint(trained, [base_uri], ignore_missing=[r".*\.lora_[AB]\."])  # base into a LoRA tree
    assert torch.equal(trained.mllm.llm.model.layers[0].self_attn.q_proj.base_layer.weight,
                       plain.mllm.llm.model.layers[0].self_attn.q_proj.weight)
    with torch.no_grad():  # a "training step": change every trainable parameter
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(0.5)
    saved = save_vrshq_checkpoint(trained, step_uri, trainable_only=True)
    names = set(read_state_dict(step_uri))
    assert names == {n for n, p in trained.named_parameters() if p.requires_grad}
    assert saved.num_tensors == len(names)
    assert any(".lora_A.default." in n for n in names) and "seg_head.mlp.0.weight" in names
    assert "mllm.llm.lm_head.weight" in names and not any(n.startswith("vision.") for n in names)

    fresh = _perturbed(lora, 5)
    load_vrshq_checkpoint(fresh, [base_uri, step_uri])
    _assert_same(trained, fresh)

    # The same weights merged: a plain (LoRA-free) model computes the same LLM logits.
    merged_uri = str(tmp_path / "merged")
    save_vrshq_checkpoint(trained, merged_uri, merge_lora=True)
    merged_model = _perturbed(plain, 6)
    load_vrshq_checkpoint(merged_model, merged_uri)
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad():
        want = trained.mllm.llm(input_ids=ids).logits
        got = merged_model.mllm.llm(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# vrshq prefix -> official prefix, written by hand from the official module tree (see official_names).
_TO_OFFICIAL = (
    ("mllm.llm.lm_head.", "lm_head."),
    ("mllm.llm.model.", "model."),
    ("vision.vision_tower.", "model.vision_tower.vision_tower.vision_model."),
    ("vision.projector.", "model.mm_projector."),
    ("seg_head.mlp.", "model.text_hidden_fcs.0."),
    ("sam2.sam2.", "model.visual_model."),
    ("anchor.clip_model.", "clip_model."),
)


def _to_official(state_dict):
    out = {}
    for key, value in state_dict.items():
        prefix, official = next((p, o) for p, o in _TO_OFFICIAL if key.startswith(p))
        out[official + key[len(prefix):]] = value
    return out


def test_official_state_dict_converts_and_loads_strictly(tiny_models, tmp_path):
    model, _ = tiny_models
    official = _to_official(model.state_dict())
    assert "model.text_hidden_fcs.0.2.bias" in official and "model.visual_model.no_mem_embed" in official
    assert "model.vision_tower.vision_tower.vision_model.post_layernorm.weight" in official
    # What older transformers also saved, and the peft wrapper of the official eval/training models.
    official["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    official["model.vision_tower.vision_tower.vision_model.embeddings.position_ids"] = torch.arange(65)[None]
    wrapped = {"base_model.model." + k: v for k, v in official.items()}
    save_file({k: v.contiguous() for k, v in wrapped.items()}, str(tmp_path / "official.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="official VRS-HQ parameter names: .*load_official_checkpoint"):
        load_vrshq_checkpoint(model, str(tmp_path / "official.safetensors"))
    converted = convert_official_state_dict(wrapped)
    assert set(converted) == set(model.state_dict())
    other = _perturbed(model, 7)
    load_state_dict_into(other, converted, source="official")
    _assert_same(model, other)


def test_official_release_folder_without_anchor(tiny_models, tmp_path):
    """The HF release layout (pickle shards + index, no clip_model): the anchor keeps its own weights."""
    model, _ = tiny_models
    official = {k: v for k, v in _to_official(model.state_dict()).items() if not k.startswith("clip_model.")}
    keys = sorted(official)
    half = len(keys) // 2
    shards = {"pytorch_model-00001-of-00002.bin": keys[:half], "pytorch_model-00002-of-00002.bin": keys[half:]}
    for name, names in shards.items():
        torch.save({k: official[k].clone() for k in names}, tmp_path / name)
    index = {"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    other = _perturbed(model, 8)
    anchor_before = {k: v.clone() for k, v in other.anchor.state_dict().items()}
    report = load_official_checkpoint(other, str(tmp_path))
    assert report.missing and all(k.startswith("anchor.clip_model.") for k in report.missing)
    non_anchor = [k for k in model.state_dict() if not k.startswith("anchor.")]
    _assert_same(model, other, keys=non_anchor)
    for k, v in other.anchor.state_dict().items():
        assert torch.equal(v, anchor_before[k]), k
    # A release missing a SAM2 tensor is still an error, naming it.
    del official["model.visual_model.no_mem_embed"]
    torch.save(official, tmp_path / "one.bin")
    with pytest.raises(CheckpointMismatchError, match=re.escape("sam2.sam2.no_mem_embed")):
        load_official_checkpoint(other, str(tmp_path / "one.bin"))
