"""Sam2Config validation, presets, the Hydra build and checkpoint loading."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vrshq.sam2_config import Sam2Config, sam2_hiera_large_vrshq, sam2_tiny
from vrshq.model.sam2_model import (
    Sam2CheckpointError,
    VrshqSam2,
    _compose_sam2_config,
    build_sam2_model,
)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("image_size", 100, "multiple of 64"),
        ("config_name", "sam2_hiera_l", "YAML"),
        ("size_overrides", ("novalue",), "Hydra overrides"),
        ("size_overrides", ("++model.image_size=256",), "image_size"),
        ("encode_chunk_size", 0, "encode_chunk_size"),
        ("memory_dtype", "int8", "memory_dtype"),
        ("checkpoint_uri", "", "checkpoint_uri"),
    ],
)
def test_config_rejects_bad_values(field, value, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Sam2Config(**{field: value})


def test_large_preset_composes_official_sizes_with_vrshq_flags():
    cfg = sam2_hiera_large_vrshq()
    assert cfg.image_size == 1024 and cfg.checkpoint_uri is None
    model = _compose_sam2_config(cfg.config_name, cfg.hydra_overrides()).model
    assert model._target_ == "vrshq.model.sam2_model.VrshqSam2"
    trunk = model.image_encoder.trunk
    assert (trunk.embed_dim, list(trunk.stages), list(trunk.global_att_blocks)) == (144, [2, 6, 36, 4], [23, 33, 43])
    assert list(model.image_encoder.neck.backbone_channel_list) == [1152, 576, 288, 144]
    assert model.memory_attention.num_layers == 4 and model.memory_encoder.out_dim == 64
    assert list(model.memory_attention.layer.self_attention.feat_sizes) == [64, 64]
    # method §5.1 overrides
    assert model.multimask_output_in_sam is False
    assert model.multimask_output_for_tracking is False
    assert model.use_multimask_token_for_obj_ptr is False
    assert model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability is False
    assert model.fill_hole_area == 8 and model.num_maskmem == 7
    assert model.binarize_mask_from_pts_for_mem_enc is True
    assert model.gate_masks_in_training is False


def test_tiny_preset_builds_small_model():
    torch.manual_seed(0)
    model = build_sam2_model(sam2_tiny(image_size=128))
    assert isinstance(model, VrshqSam2) and not model.training
    assert model.image_size == 128 and model.prompt_embed_dim == 64
    assert model.multimask_output_in_sam is False and model.fill_hole_area == 8
    assert model.memory_attention.layers[0].self_attn.freqs_cis.shape[0] == 8 * 8  # RoPE grid S/16
    assert len(model.memory_attention.layers) == 2
    assert sum(p.numel() for p in model.parameters()) < 3_000_000
    out = model.forward_image(torch.zeros(1, 3, 128, 128))
    assert [tuple(x.shape[-2:]) for x in out["backbone_fpn"]] == [(32, 32), (16, 16), (8, 8)]


def test_build_restores_global_hydra():
    from hydra.core.global_hydra import GlobalHydra

    before = GlobalHydra.instance().hydra
    build_sam2_model(sam2_tiny(image_size=64))
    assert GlobalHydra.instance().hydra is before


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    cfg = sam2_tiny(image_size=64, checkpoint_uri=str(tmp_path / "nope.pt"))
    with pytest.raises(Sam2CheckpointError, match=r"nope\.pt.*does not exist.*checkpoint_uri"):
        build_sam2_model(cfg)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_checkpoint_round_trip(tmp_path, suffix):
    torch.manual_seed(0)
    source = build_sam2_model(sam2_tiny(image_size=64))
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".pt":
        torch.save({"model": state}, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    torch.manual_seed(1)
    loaded = build_sam2_model(dataclasses.replace(sam2_tiny(image_size=64), checkpoint_uri=f"file://{path}"))
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_mismatched_checkpoint_lists_keys(tmp_path):
    torch.manual_seed(0)
    state = build_sam2_model(sam2_tiny(image_size=64)).state_dict()
    state.pop("no_mem_embed")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(Sam2CheckpointError, match=r"missing keys \['no_mem_embed'\].*unexpected keys \['extra.weight'\]"):
        build_sam2_model(sam2_tiny(image_size=64, checkpoint_uri=str(path)))


def test_a_model_folder_gives_its_sam2_and_a_folder_without_one_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    from vrshq.model.sam2_model import load_sam2_checkpoint

    import pathlib

    # a VRS-HQ model folder: SAM2 under sam2.sam2.*
    committed = str(pathlib.Path(__file__).resolve().parents[2] / "checkpoints" / "tiny-synthetic")
    expected = {k.removeprefix("sam2.sam2."): v for k, v in load_file(f"{committed}/model.safetensors").items()
                if k.startswith("sam2.sam2.")}
    from pipelines.training.train_config import ModelSpec, model_config_from_spec
    from research.presets import model_preset

    torch.manual_seed(0)
    sam2 = build_sam2_model(model_config_from_spec(ModelSpec(preset=model_preset("learn-256-pos-p4"))).sam2)
    load_sam2_checkpoint(sam2, committed)
    state = sam2.state_dict()
    assert expected and set(expected) == set(state)
    for key, value in expected.items():
        assert torch.equal(state[key], value.to(state[key].dtype)), key

    save_file({"llm.weight": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(Sam2CheckpointError, match=r"model folder without SAM2 weights"):
        load_sam2_checkpoint(sam2, str(tmp_path))
