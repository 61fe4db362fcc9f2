"""A tiny model written in the released VRS-HQ format, and a tiny CLIP anchor folder in the
``openai/clip-vit-large-patch14-336`` layout, for tests of the release loading path.

The release folder holds what the published one holds, at the tiny preset's sizes: official key names
(the inverse of ``vrshq.checkpoint.official_names``), RoPE ``inv_freq`` buffers as transformers 4.31 saved
them, the LLM/CLIP tower/projector in bf16 and SAM2/``text_hidden_fcs`` in fp32, two
``pytorch_model-0000N-of-00002.bin`` shards (embeddings and the first layers in the first) with
``pytorch_model.bin.index.json`` (or ``.safetensors`` shards with ``model.safetensors.index.json``), a
Chat-UniVi ``config.json``, and the slow LLaMA tokenizer files of ``tests/fixtures/slow_llama_tokenizer``.
No ``clip_model.*``: the anchor is written to its own folder.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil

import torch

FIXTURE_TOKENIZER = pathlib.Path(__file__).resolve().parent / "fixtures" / "slow_llama_tokenizer"
TOKENIZER_FILES = ("tokenizer.model", "added_tokens.json", "tokenizer_config.json", "special_tokens_map.json")
_FP32_PREFIXES = ("model.visual_model.", "model.text_hidden_fcs.")


def tiny_release_config():
    """The tiny preset with the fixture tokenizer's vocabulary (400 pieces) and the LLaMA tokenizer."""
    from vrshq.builders import tiny_config

    cfg = tiny_config(trainable="none")
    llm = dataclasses.replace(cfg.llm, vocab_size=400, tokenizer="llama", tokenizer_path=str(FIXTURE_TOKENIZER))
    return dataclasses.replace(cfg, llm=llm)


def build_source_model(seed: int = 0):
    """The tiny model whose weights the fixture folders hold (seeded random init)."""
    from vrshq.builders import build_vrshq

    torch.manual_seed(seed)
    return build_vrshq(tiny_release_config())


def release_config_json(cfg) -> dict:
    """A ``config.json`` shaped like the release's (Chat-UniVi LLaMA config, vocab with [SEG]/[TAK])."""
    llm = cfg.llm
    return {
        "_name_or_path": "VRS-HQ-7B", "architectures": ["ChatUniViLlamaForCausalLM"], "model_type": "ChatUniVi",
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "hidden_act": "silu", "initializer_range": 0.02,
        "hidden_size": llm.hidden_size, "intermediate_size": llm.intermediate_size,
        "num_attention_heads": llm.num_attention_heads, "num_hidden_layers": llm.num_hidden_layers,
        "num_key_value_heads": llm.num_key_value_heads, "max_position_embeddings": llm.max_position_embeddings,
        "rms_norm_eps": llm.rms_norm_eps, "rope_scaling": None, "pretraining_tp": 1, "tie_word_embeddings": False,
        "vocab_size": llm.vocab_size + 2, "torch_dtype": "bfloat16", "transformers_version": "4.31.0",
        "use_cache": True, "freeze_mm_mlp_adapter": False, "mm_hidden_size": cfg.vision.hidden_size,
        "mm_use_im_patch_token": False, "mm_use_im_start_end": True,
        "mm_vision_select_feature": "patch", "mm_vision_select_layer": cfg.vision.select_layer,
        "mm_vision_tower": "openai/clip-vit-large-patch14", "tune_mm_mlp_adapter": False, "use_cluster": True,
    }


def official_tensors(model) -> dict[str, torch.Tensor]:
    """The model's weights under the official names and dtypes, with 4.31's ``inv_freq`` buffers, no anchor."""
    from vrshq.checkpoint.official_names import VRSHQ_ANCHOR_PREFIX, to_official_state_dict

    state = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith(VRSHQ_ANCHOR_PREFIX)}
    official = to_official_state_dict(state)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in official.items():
        keep_fp32 = key.startswith(_FP32_PREFIXES) or not tensor.is_floating_point()
        out[key] = tensor if keep_fp32 else tensor.to(torch.bfloat16)
    llm = model.cfg.llm
    head = llm.hidden_size // llm.num_attention_heads
    inv_freq = 1.0 / (llm.rope_theta ** (torch.arange(0, head, 2).float() / head))
    for i in range(llm.num_hidden_layers):
        out[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
    return out


def _shards(keys: list[str], fmt: str) -> dict[str, list[str]]:
    """Two shards as the release: the embeddings and the first LLM layer, then everything else."""
    first = [k for k in keys if k.startswith(("model.embed_tokens.", "model.layers.0."))]
    rest = [k for k in keys if k not in set(first)]
    ext = "bin" if fmt == "bin" else "safetensors"
    stem = "pytorch_model" if fmt == "bin" else "model"
    return {f"{stem}-00001-of-00002.{ext}": first, f"{stem}-00002-of-00002.{ext}": rest}


def write_release_folder(folder: pathlib.Path, model, *, fmt: str = "bin") -> pathlib.Path:
    """Write ``model`` as the release is published (``fmt``: ``"bin"`` or ``"safetensors"`` shards)."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = official_tensors(model)
    shards = _shards(list(tensors), fmt)
    for name, keys in shards.items():
        part = {k: tensors[k].contiguous() for k in keys}
        if fmt == "bin":
            torch.save(part, folder / name)
        else:
            from safetensors.torch import save_file

            save_file(part, str(folder / name), metadata={"format": "pt"})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}
    index_name = "pytorch_model.bin.index.json" if fmt == "bin" else "model.safetensors.index.json"
    (folder / index_name).write_text(json.dumps(index, indent=2))
    (folder / "config.json").write_text(json.dumps(release_config_json(model.cfg), indent=2))
    for name in TOKENIZER_FILES:
        shutil.copy(FIXTURE_TOKENIZER / name, folder / name)
    return folder


def write_anchor_folder(folder: pathlib.Path, model) -> pathlib.Path:
    """The model's anchor CLIP as an ``openai/clip-vit-large-patch14-336``-style folder: ``config.json``,
    ``pytorch_model.bin``, the CLIP tokenizer and ``preprocessor_config.json``."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clip = model.anchor.clip_model
    clip.config.to_json_file(str(folder / "config.json"))
    torch.save({k: v.detach().clone() for k, v in clip.state_dict().items()}, folder / "pytorch_model.bin")
    model.anchor.tokenizer.save_pretrained(str(folder))
    image = model.cfg.anchor.image
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": image.shortest_edge},
        "do_center_crop": True, "crop_size": {"height": image.crop_size, "width": image.crop_size},
        "do_normalize": True, "image_mean": list(image.mean), "image_std": list(image.std), "resample": 3,
    }, indent=2))
    return folder
