"""The released VRS-HQ folder as published (official names, sharded .bin or .safetensors with an index,
config.json, slow-tokenizer files) loads through the release path onto empty weights, strictly, with
the CLIP-336 anchor from its own folder; missing files are named before any work."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.release_fixture import build_source_model, write_anchor_folder, write_release_folder
from vrshq.builders import tiny_config
from vrshq.checkpoint.weight_files import CheckpointMismatchError
from vrshq.checkpoint.official_names import (
    UnknownOfficialKeysError,
    VRSHQ_ANCHOR_PREFIX,
    convert_official_state_dict,
    to_official_state_dict,
)
from vrshq.checkpoint.release import (
    ReleaseFileError,
    check_release,
    is_release_checkpoint,
    load_release,
    release_vrshq_config,
)
from vrshq.model.tokenizer import PIECE_ENCODER_ATTR

_FULL_PRECISION = ("sam2.", "seg_head.", VRSHQ_ANCHOR_PREFIX)  # stored in fp32 by the release


@pytest.fixture(scope="module")
def source():
    return build_source_model(seed=3)


@pytest.fixture(scope="module")
def folders(source, tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    return {
        "bin": write_release_folder(root / "bin", source, fmt="bin"),
        "safetensors": write_release_folder(root / "st", source, fmt="safetensors"),
        "anchor": write_anchor_folder(root / "anchor", source),
    }


def _load(folder, anchor, **kwargs):
    config = release_vrshq_config(str(folder), tiny_config(trainable="none"), anchor=anchor)
    return load_release(str(folder), config, anchor=anchor, **kwargs)


def _assert_weights_equal_release(model, source):
    got, want = model.state_dict(), source.state_dict()
    assert got.keys() == want.keys()
    for key, tensor in want.items():
        expected = tensor if key.startswith(_FULL_PRECISION) else tensor.to(torch.bfloat16).float()
        assert torch.equal(got[key], expected), key


def test_inverse_mapping_round_trips_every_key(source):
    state = source.state_dict()
    official = to_official_state_dict(state)
    assert not any(k.startswith(("mllm.", "sam2.", "anchor.")) for k in official)
    assert convert_official_state_dict(official) == dict(state)
    with pytest.raises(ValueError, match="no part of the official model"):
        to_official_state_dict({"elsewhere.weight": 0})


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_release_folder_loads_strictly_with_its_dtypes_and_tokenizer(folders, source, fmt):
    assert is_release_checkpoint(str(folders[fmt]))
    check_release(str(folders[fmt]), anchor=str(folders["anchor"]), anchor_image_size=32)
    model = _load(folders[fmt], str(folders["anchor"]))
    _assert_weights_equal_release(model, source)
    assert not any(p.is_meta for p in model.parameters())
    assert model.mllm.llm.get_input_embeddings().weight.shape[0] == 402  # 400 pieces + [SEG], [TAK]
    assert getattr(model.tokenizer, PIECE_ENCODER_ATTR) is not None
    assert model.tokenizer.convert_tokens_to_ids(["[SEG]", "[TAK]"]) == [400, 401]


def test_random_anchor_is_explicit_and_a_missing_one_is_an_error(folders, source, caplog):
    with caplog.at_level("WARNING"):
        model = _load(folders["bin"], "random")
    assert "random" in caplog.text
    assert not torch.equal(model.anchor.clip_model.visual_projection.weight,
                           source.anchor.clip_model.visual_projection.weight)
    with pytest.raises(ReleaseFileError, match="clip-vit-large-patch14-336"):
        check_release(str(folders["bin"]), anchor=None)
    with pytest.raises(ReleaseFileError, match="anchor"):
        _load(folders["bin"], None)


def test_missing_files_are_named_with_where_to_get_them(folders, tmp_path):
    release = tmp_path / "release"
    shutil.copytree(folders["bin"], release)
    (release / "tokenizer.model").unlink()
    with pytest.raises(ReleaseFileError, match=r"tokenizer\.model.*missing.*VRS-HQ"):
        check_release(str(release), anchor="random")
    with pytest.raises(ReleaseFileError, match="no such folder.*clip-vit-large-patch14-336"):
        check_release(str(folders["bin"]), anchor=str(tmp_path / "nowhere"), anchor_image_size=32)
    for name in ("pytorch_model.bin", "preprocessor_config.json", "config.json"):
        anchor = tmp_path / f"anchor-{name}"
        shutil.copytree(folders["anchor"], anchor)
        (anchor / name).unlink()
        with pytest.raises(ReleaseFileError, match=name.replace(".", r"\.")):
            check_release(str(folders["bin"]), anchor=str(anchor), anchor_image_size=32)
    with pytest.raises(ReleaseFileError, match="crops to 32 px"):
        check_release(str(folders["bin"]), anchor=str(folders["anchor"]), anchor_image_size=336)
    shard = tmp_path / "shard"
    shutil.copytree(folders["bin"], shard)
    (shard / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(Exception, match="pytorch_model-00002-of-00002.bin"):
        check_release(str(shard), anchor="random")


def test_unknown_keys_and_shape_mismatches_are_refused(folders, tmp_path):
    release = tmp_path / "release"
    shutil.copytree(folders["bin"], release)
    shard = release / "pytorch_model-00002-of-00002.bin"
    tensors = torch.load(shard, weights_only=True)
    tensors["model.some_new_head.weight"] = torch.zeros(2)
    torch.save(tensors, shard)
    with pytest.raises(UnknownOfficialKeysError, match="model.some_new_head.weight"):
        _load(release, "random")
    del tensors["model.some_new_head.weight"]
    tensors["model.mm_projector.bias"] = torch.zeros(3, dtype=torch.bfloat16)
    torch.save(tensors, shard)
    with pytest.raises(CheckpointMismatchError, match=r"vision\.projector\.bias: checkpoint \[3\]"):
        _load(release, "random")


def test_release_on_s3_loads_through_fsspec(folders, source, s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("VRSHQ_CACHE", str(tmp_path / "cache"))
    bucket = s3_server.make_bucket()
    fs = s3_server.filesystem()
    for name in ("bin", "anchor"):
        fs.put(str(folders[name]), f"{bucket}/{name}".removeprefix("s3://"), recursive=True)
    options = s3_server.storage_options
    release, anchor = f"{bucket}/bin", f"{bucket}/anchor"
    check_release(release, anchor=anchor, anchor_image_size=32, storage_options=options)
    config = release_vrshq_config(release, tiny_config(trainable="none"), anchor=anchor, storage_options=options)
    assert (tmp_path / "cache" / "files").is_dir()  # the tokenizer and anchor files, copied once
    model = load_release(release, config, anchor=anchor, storage_options=options)
    _assert_weights_equal_release(model, source)


def test_sam2_checkpoint_fills_a_release_without_sam2(folders, source, tmp_path):
    release = tmp_path / "release"
    shutil.copytree(folders["bin"], release)
    shard = release / "pytorch_model-00002-of-00002.bin"
    tensors = torch.load(shard, weights_only=True)
    torch.save({k: v for k, v in tensors.items() if not k.startswith("model.visual_model.")}, shard)
    index = json.loads((release / "pytorch_model.bin.index.json").read_text())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if not k.startswith("model.visual_model.")}
    (release / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(ReleaseFileError, match="no SAM2 weights.*--sam2.*sam2-hiera-large"):
        check_release(str(release), anchor="random")
    other = {k: v + 1 if v.is_floating_point() else v  # another SAM2, as its release: {"model": state dict}
             for k, v in source.sam2.sam2.state_dict().items()}
    torch.save({"model": other}, tmp_path / "sam2_hiera_tiny.pt")
    check_release(str(release), anchor="random", sam2=str(tmp_path / "sam2_hiera_tiny.pt"))
    model = _load(release, str(folders["anchor"]), sam2=str(tmp_path / "sam2_hiera_tiny.pt"))
    for key, tensor in other.items():
        assert torch.equal(model.sam2.sam2.state_dict()[key], tensor), key
    with pytest.raises(CheckpointMismatchError, match="sam2.sam2."):
        _load(release, str(folders["anchor"]))
