"""Weights I/O on small generic modules: round trips, sharding, strictness, pickle refusal, LoRA.

The VrshqModel-specific tests (tiny preset, official names) live in test_checkpoint_vrshq.py.
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from vrshq.checkpoint.config_io import config_from_dict, config_to_dict
from vrshq.checkpoint.load import load_vrshq_checkpoint
from vrshq.checkpoint.save import save_vrshq_checkpoint
from vrshq.checkpoint.state import checkpoint_state_dict
from vrshq.checkpoint.weight_files import (
    CONFIG_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    UnsafeCheckpointError,
    read_state_dict,
)


class _Toy(nn.Module):
    def __init__(self, width: int = 8, vocab: int = 11) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.block = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4))
        self.norm = nn.LayerNorm(4)
        self.register_buffer("scale", torch.tensor([2.0, 3.0]))


def _toy(seed: int, **kwargs) -> _Toy:
    torch.manual_seed(seed)
    return _Toy(**kwargs)


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


def test_round_trip_local_single_file(tmp_path):
    src, dst = _toy(0), _toy(1)
    assert not torch.equal(src.block[0].weight, dst.block[0].weight)
    saved = save_vrshq_checkpoint(src, str(tmp_path / "ck"))
    assert saved.weight_files == (WEIGHTS_NAME,)
    assert saved.num_tensors == len(src.state_dict())
    assert sorted(os.listdir(tmp_path / "ck")) == [CONFIG_NAME, WEIGHTS_NAME]
    report = load_vrshq_checkpoint(dst, str(tmp_path / "ck"))
    _assert_same(src, dst)
    assert set(report.loaded) == set(src.state_dict()) and not report.missing


def test_sharded_save_writes_hf_index_and_loads(tmp_path):
    src, dst = _toy(0, width=32), _toy(1, width=32)
    # block.0.weight is 32*32*4 = 4096 bytes: a 5000-byte limit forces several shards.
    saved = save_vrshq_checkpoint(src, str(tmp_path / "ck"), max_shard_size=5000)
    assert len(saved.weight_files) > 1
    assert all(n.startswith("model-0000") and n.endswith(f"-of-0000{len(saved.weight_files)}.safetensors")
               for n in saved.weight_files)
    index = json.loads((tmp_path / "ck" / WEIGHTS_INDEX_NAME).read_text())
    assert set(index["weight_map"]) == set(src.state_dict())
    assert set(index["weight_map"].values()) == set(saved.weight_files)
    expected_bytes = sum(t.numel() * t.element_size() for t in src.state_dict().values())
    assert index["metadata"]["total_size"] == expected_bytes == saved.num_bytes
    assert not (tmp_path / "ck" / WEIGHTS_NAME).exists()
    load_vrshq_checkpoint(dst, str(tmp_path / "ck"))
    _assert_same(src, dst)
    # The index file itself is also accepted as the URI.
    load_vrshq_checkpoint(_toy(2, width=32), str(tmp_path / "ck" / WEIGHTS_INDEX_NAME))


def test_shard_sizes_count_the_saved_dtype_and_size_strings_parse(tmp_path):
    src = _toy(0, width=32)  # 6200 bytes in float32, 3100 in bfloat16
    assert sum(t.numel() * t.element_size() for t in src.state_dict().values()) == 6200
    assert len(save_vrshq_checkpoint(src, str(tmp_path / "f32"), max_shard_size="3.2KB").weight_files) == 3
    saved = save_vrshq_checkpoint(src, str(tmp_path / "bf16"), max_shard_size="3.2KB", dtype=torch.bfloat16)
    assert saved.weight_files == (WEIGHTS_NAME,) and saved.num_bytes == 3100
    for bad in (0, -1, "5 parsecs", "", True):
        with pytest.raises(ValueError, match="max_shard_size"):
            save_vrshq_checkpoint(src, str(tmp_path / f"bad{bad}"), max_shard_size=bad)


def test_inspect_checkpoint_reads_headers_and_config(tmp_path):
    from vrshq.checkpoint.load import inspect_checkpoint

    src = _toy(0, width=32)
    cfg = _Outer()
    save_vrshq_checkpoint(src, str(tmp_path / "ck"), max_shard_size=5000, config=cfg, tokenizer=False)
    info = inspect_checkpoint(str(tmp_path / "ck"))
    assert info.content == "full" and info.has_config and info.tokenizer_files == ()
    assert dict(info.shapes) == {k: tuple(v.shape) for k, v in src.state_dict().items()}
    assert len(info.weight_files) == 2 and all(u.startswith(str(tmp_path / "ck") + "/") for u in info.weight_files)
    single = inspect_checkpoint(info.weight_files[0])
    assert not single.has_config and set(single.shapes) < set(info.shapes)
    with pytest.raises(CheckpointNotFoundError):
        inspect_checkpoint(str(tmp_path / "nope"))


def test_existing_checkpoint_needs_overwrite_and_stale_shards_are_removed(tmp_path):
    uri = str(tmp_path / "ck")
    save_vrshq_checkpoint(_toy(0, width=32), uri, max_shard_size=5000)
    with pytest.raises(ValueError, match="overwrite=True"):
        save_vrshq_checkpoint(_toy(1, width=32), uri)
    src = _toy(1, width=32)
    save_vrshq_checkpoint(src, uri, overwrite=True)
    assert sorted(os.listdir(uri)) == [CONFIG_NAME, WEIGHTS_NAME]
    dst = _toy(2, width=32)
    load_vrshq_checkpoint(dst, uri)
    _assert_same(src, dst)


def test_strict_error_names_missing_unexpected_and_shapes(tmp_path):
    src = _toy(0)
    tensors = {k: v.clone() for k, v in src.state_dict().items()}
    del tensors["norm.bias"]
    tensors["head.extra"] = torch.zeros(3)
    tensors["block.2.weight"] = torch.zeros(5, 8)  # model has (4, 8)
    save_file(tensors, str(tmp_path / "w.safetensors"))
    dst = _toy(1)
    before = dst.block[0].weight.clone()
    with pytest.raises(CheckpointMismatchError) as info:
        load_vrshq_checkpoint(dst, str(tmp_path / "w.safetensors"))
    err = info.value
    assert err.missing == ("norm.bias",)
    assert err.unexpected == ("head.extra",)
    assert err.mismatched == (("block.2.weight", (5, 8), (4, 8)),)
    message = str(err)
    for text in ("norm.bias", "head.extra", "block.2.weight: checkpoint [5, 8] vs model [4, 8]"):
        assert text in message
    assert torch.equal(dst.block[0].weight, before), "nothing may be loaded when strict loading fails"
    # Non-strict: loads what matches, reports the rest.
    report = load_vrshq_checkpoint(dst, str(tmp_path / "w.safetensors"), strict=False)
    assert torch.equal(dst.block[0].weight, src.block[0].weight)
    assert report.missing == ("norm.bias",) and report.unexpected == ("head.extra",)
    assert "block.2.weight" not in report.loaded


def test_missing_path_error_says_what_to_put_where(tmp_path):
    with pytest.raises(CheckpointNotFoundError) as info:
        load_vrshq_checkpoint(_toy(0), str(tmp_path / "nope"))
    message = str(info.value)
    assert str(tmp_path / "nope") in message
    for text in (CONFIG_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME, "tokenizer"):
        assert text in message
    assert isinstance(info.value, FileNotFoundError)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(CheckpointNotFoundError, match=r"holds no weights \(it has: \['notes.txt'\]\)"):
        load_vrshq_checkpoint(_toy(0), str(tmp_path / "empty"))


def test_pickle_state_dict_is_read_weights_only(tmp_path):
    src, dst = _toy(0), _toy(1)
    torch.save({"model": src.state_dict()}, tmp_path / "sam2_style.pt")  # sam2 wraps weights in "model"
    load_vrshq_checkpoint(dst, str(tmp_path / "sam2_style.pt"))
    _assert_same(src, dst)


class _Payload:
    """Unpickling this runs code that writes a marker file (what a malicious checkpoint would do)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_malicious_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "marker"
    bad = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "evil": _Payload(str(marker))}, bad)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_vrshq_checkpoint(_toy(0), str(bad))
    assert not marker.exists(), "the pickle payload ran"
    message = str(info.value)
    assert str(bad) in message and "weights_only=True" in message and "safetensors" in message
    assert "(exec)" in message  # names the object that was refused
    with pytest.raises(UnsafeCheckpointError):
        read_state_dict(str(bad))
    assert not marker.exists()
    # Control: the payload is real, full unpickling does write the marker.
    torch.load(bad, weights_only=False)
    assert marker.read_text() == "pwned"


def test_garbage_files_give_clear_errors(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"\x01\x00")
    with pytest.raises(CheckpointError, match="truncated safetensors"):
        load_vrshq_checkpoint(_toy(0), str(tmp_path / "x.safetensors"))
    (tmp_path / "i").mkdir()
    (tmp_path / "i" / WEIGHTS_INDEX_NAME).write_text(json.dumps({"weight_map": {"w": "../x.safetensors"}}))
    with pytest.raises(CheckpointError, match="same folder"):
        load_vrshq_checkpoint(_toy(0), str(tmp_path / "i"))
    (tmp_path / "y.bin").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="y.bin: not a readable torch file") as info:
        load_vrshq_checkpoint(_toy(0), str(tmp_path / "y.bin"))
    assert not isinstance(info.value, UnsafeCheckpointError)
    # A DeepSpeed-style file with non-tensor objects (argparse.Namespace) is refused, not run.
    import argparse

    torch.save({"module": _toy(0).state_dict(), "args": argparse.Namespace(lr=1.0)}, tmp_path / "ds.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"\(argparse.Namespace\)"):
        load_vrshq_checkpoint(_toy(0), str(tmp_path / "ds.pt"))


def test_trainable_only_save_then_base_plus_trainable_load(tmp_path):
    base = _toy(0)
    save_vrshq_checkpoint(base, str(tmp_path / "base"))
    trained = _toy(0)
    for p in trained.parameters():
        p.requires_grad_(False)
    trained.block[2].requires_grad_(True)
    with torch.no_grad():
        trained.block[2].weight.add_(1.0)
        trained.embed.weight.add_(5.0)  # frozen: must not be in the trainable file
    saved = save_vrshq_checkpoint(trained, str(tmp_path / "step"), trainable_only=True)
    assert saved.content == "trainable" and saved.num_tensors == 2
    assert set(read_state_dict(str(tmp_path / "step"))) == {"block.2.weight", "block.2.bias"}

    fresh = _toy(7)
    with pytest.raises(CheckpointMismatchError, match=r"trainable-only checkpoint: load it together with its base"):
        load_vrshq_checkpoint(fresh, str(tmp_path / "step"))
    load_vrshq_checkpoint(fresh, [str(tmp_path / "base"), str(tmp_path / "step")])
    assert torch.equal(fresh.block[2].weight, trained.block[2].weight)  # trainable file wins
    assert torch.equal(fresh.embed.weight, base.embed.weight)  # the rest from the base
    assert torch.equal(fresh.block[0].weight, base.block[0].weight)


def test_dtype_cast_and_tied_weights(tmp_path):
    src = _toy(0)
    src.tied = nn.Linear(8, 11, bias=False)
    src.tied.weight = src.embed.weight  # shared storage: safetensors needs distinct tensors
    save_vrshq_checkpoint(src, str(tmp_path / "ck"), dtype=torch.bfloat16)
    sd = read_state_dict(str(tmp_path / "ck"))
    assert sd["embed.weight"].dtype == torch.bfloat16 and sd["scale"].dtype == torch.bfloat16
    dst = _toy(1)
    dst.tied = nn.Linear(8, 11, bias=False)
    dst.tied.weight = dst.embed.weight
    load_vrshq_checkpoint(dst, str(tmp_path / "ck"))
    assert dst.embed.weight.dtype == torch.float32  # the model's dtype is kept
    torch.testing.assert_close(dst.embed.weight, src.embed.weight.to(torch.bfloat16).float(), rtol=0, atol=0)
    assert dst.tied.weight is dst.embed.weight


def test_meta_device_model_is_materialised(tmp_path):
    src = _toy(0)
    save_vrshq_checkpoint(src, str(tmp_path / "ck"))
    with torch.device("meta"):
        dst = _Toy()
    load_vrshq_checkpoint(dst, str(tmp_path / "ck"))
    assert not any(t.is_meta for t in dst.state_dict().values())
    _assert_same(src, dst)
    with pytest.raises(ValueError, match="meta device"):
        with torch.device("meta"):
            save_vrshq_checkpoint(_Toy(), str(tmp_path / "meta"))
    # A non-persistent buffer is in no checkpoint: it would stay on the meta device.
    with torch.device("meta"):
        dst = _Toy()
        dst.register_buffer("cache", torch.zeros(3), persistent=False)
    with pytest.raises(CheckpointError, match=r"still on the meta device: \[cache\]"):
        load_vrshq_checkpoint(dst, str(tmp_path / "ck"))


def _lora_toy(seed: int) -> nn.Module:
    from peft import LoraConfig, inject_adapter_in_model

    model = _toy(seed)
    model = inject_adapter_in_model(LoraConfig(r=2, lora_alpha=4, target_modules=["block.0"]), model)
    torch.manual_seed(seed + 100)
    with torch.no_grad():  # peft initialises B to zero; make the adapter non-trivial
        model.block[0].lora_B["default"].weight.normal_()
    return model


def test_lora_merged_save_loads_into_plain_model_with_same_outputs(tmp_path):
    lora = _lora_toy(0).eval()
    assert "block.0.base_layer.weight" in lora.state_dict()
    saved = save_vrshq_checkpoint(lora, str(tmp_path / "merged"), merge_lora=True)
    assert saved.content == "merged"
    names = set(read_state_dict(str(tmp_path / "merged")))
    assert names == set(_toy(0).state_dict())  # plain names, no lora_* keys
    plain = _toy(5).eval()
    load_vrshq_checkpoint(plain, str(tmp_path / "merged"))
    x = torch.randn(3, 8)
    torch.testing.assert_close(plain.block(x), lora.block(x), rtol=1e-5, atol=1e-5)
    # Hand check of the merge: W + (alpha / r) * B @ A.
    layer = lora.block[0]
    expected = layer.base_layer.weight + 2.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    torch.testing.assert_close(plain.block[0].weight, expected)


def test_lora_adapter_plus_base_round_trip(tmp_path):
    base = _toy(0)
    save_vrshq_checkpoint(base, str(tmp_path / "base"))  # plain names
    trained = _lora_toy(0)
    for name, p in trained.named_parameters():
        p.requires_grad_("lora_" in name)
    save_vrshq_checkpoint(trained, str(tmp_path / "adapter"), trainable_only=True)
    assert set(read_state_dict(str(tmp_path / "adapter"))) == {
        "block.0.lora_A.default.weight", "block.0.lora_B.default.weight"}
    fresh = _lora_toy(9)  # LoRA applied, different random values everywhere
    with pytest.raises(CheckpointMismatchError, match="apply the same LoRA"):
        load_vrshq_checkpoint(_toy(3), [str(tmp_path / "base"), str(tmp_path / "adapter")])
    load_vrshq_checkpoint(fresh, [str(tmp_path / "base"), str(tmp_path / "adapter")])
    _assert_same(trained, fresh)


@dataclasses.dataclass(frozen=True)
class _Inner:
    sizes: tuple[int, ...] = (1, 2)
    dtype: torch.dtype = torch.float32
    path: str | None = None


@dataclasses.dataclass(frozen=True)
class _Outer:
    inner: _Inner = _Inner()
    alpha: float = 0.1
    pair: tuple[int, str] = (3, "x")


def test_config_dict_round_trip_and_unknown_fields():
    cfg = _Outer(inner=_Inner(sizes=(4, 5, 6), dtype=torch.bfloat16, path="/w"), alpha=1, pair=(7, "y"))
    data = json.loads(json.dumps(config_to_dict(cfg)))
    assert data == {"inner": {"sizes": [4, 5, 6], "dtype": "bfloat16", "path": "/w"}, "alpha": 1, "pair": [7, "y"]}
    back = config_from_dict(_Outer, data)
    assert back == cfg and isinstance(back.alpha, float) and isinstance(back.inner.sizes, tuple)
    with pytest.raises(ValueError, match=r"no field\(s\) \['beta'\]"):
        config_from_dict(_Outer, {**data, "beta": 2})


def test_checkpoint_state_dict_rejects_bad_content():
    with pytest.raises(ValueError, match="content must be one of"):
        checkpoint_state_dict(_toy(0), content="half")
    frozen = _toy(0).requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter with requires_grad"):
        checkpoint_state_dict(frozen, content="trainable")


def test_round_trip_on_s3_sharded_with_tokenizer(s3_server):
    from vrshq.checkpoint.load import load_vrshq_config, load_vrshq_tokenizer
    from vrshq.model.tokenizer import build_tiny_tokenizer

    s3_server.make_bucket("vrshq-ckpt-io")
    uri = "s3://vrshq-ckpt-io/runs/a/step-1"
    opts = s3_server.storage_options
    src, dst = _toy(0, width=32), _toy(1, width=32)
    tok = build_tiny_tokenizer()
    cfg = _Outer(inner=_Inner(sizes=(9,), path="s3://somewhere"))
    saved = save_vrshq_checkpoint(src, uri, storage_options=opts, tokenizer=tok, config=cfg, max_shard_size=5000)
    assert len(saved.weight_files) > 1 and "tokenizer.json" in saved.tokenizer_files
    fs = s3_server.filesystem()
    listed = {p.rsplit("/", 1)[-1] for p in fs.ls("vrshq-ckpt-io/runs/a/step-1", detail=False)}
    assert {CONFIG_NAME, WEIGHTS_INDEX_NAME, *saved.weight_files, *saved.tokenizer_files} == listed
    load_vrshq_checkpoint(dst, uri, storage_options=opts)
    _assert_same(src, dst)
    assert load_vrshq_config(uri, storage_options=opts, config_class=_Outer) == cfg
    back = load_vrshq_tokenizer(uri, storage_options=opts)
    assert back("red circle").input_ids == tok("red circle").input_ids
    with pytest.raises(CheckpointNotFoundError, match="nothing at this path"):
        load_vrshq_checkpoint(dst, "s3://vrshq-ckpt-io/runs/missing", storage_options=opts)
    with pytest.raises(ValueError, match="overwrite=True"):
        save_vrshq_checkpoint(src, uri, storage_options=opts)


def test_storage_options_are_never_written(tmp_path):
    @dataclasses.dataclass(frozen=True)
    class _WithSecrets:
        checkpoint_uri: str = "s3://b/k"
        checkpoint_storage_options: dict | None = None

    cfg = _WithSecrets(checkpoint_storage_options={"key": "AKIA-secret", "secret": "s3cr3t"})
    assert config_to_dict(cfg) == {"checkpoint_uri": "s3://b/k", "checkpoint_storage_options": None}
    save_vrshq_checkpoint(_toy(0), str(tmp_path / "ck"), config=cfg)
    text = (tmp_path / "ck" / CONFIG_NAME).read_text()
    assert "s3cr3t" not in text and "AKIA" not in text and "s3://b/k" in text
