"""benchmarks/release_load.py: the written folders are the release's layout (checked against the facts of
the published 7B checkpoint on the meta device), and the tiny run loads them and segments a video."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import release_load


@pytest.mark.slow
def test_7b_layout_is_the_published_one():
    layout, _ = release_load._official_layout(release_load.release_preset_config("vrshq-7b"))
    assert len(layout) == 1620
    buffers = [k for k in layout if k.endswith(("rotary_emb.inv_freq", "positional_encoding_gaussian_matrix"))]
    assert len(buffers) == 33
    parameters = sum(math.prod(shape) for key, (shape, _) in layout.items() if key not in buffers)
    assert parameters == 7_288_070_450
    assert layout["model.embed_tokens.weight"][0] == layout["lm_head.weight"][0] == (32002, 4096)
    assert sum(k.startswith("model.visual_model.") for k in layout) == 900
    assert sum(k.startswith("model.vision_tower.vision_tower.vision_model.") for k in layout) == 391
    assert not any(k.startswith("clip_model.") for k in layout)
    assert {str(d) for k, (_, d) in layout.items() if k.startswith(("model.visual_model.", "model.text_hidden_fcs."))
            } == {"torch.float32"}
    assert str(layout["model.layers.0.self_attn.q_proj.weight"][1]) == "torch.bfloat16"


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("release-load")
    release_load.write_release(folder, "tiny")
    return folder


@pytest.mark.slow
def test_tiny_run_loads_and_segments(tiny_folder, capsys):
    assert release_load.main(["--preset", "tiny", "--dir", str(tiny_folder), "--frames", "3", "--height", "90",
                              "--width", "160", "--expressions", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "wrote" not in out  # the folders of the fixture are reused
    row = json.loads(out.strip().splitlines()[-1])
    assert sorted(p.name for p in (tiny_folder / "release").iterdir()) == [
        "added_tokens.json", "config.json", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
        "pytorch_model.bin.index.json", "special_tokens_map.json", "tokenizer.model", "tokenizer_config.json"]
    assert row["preset"] == "tiny" and row["frames"] == 3 and row["first_chunk_frames"] >= 1
    for key in ("load_s", "build_s", "read_s", "copy_to_device_s", "first_mask_s", "all_masks_s", "peak_host_rss_gb"):
        assert row[key] > 0, key


def test_plain_and_streamed_loads_agree(tiny_folder):
    """The reference of --compare loads the same weights as the streamed path."""
    import torch

    from vrshq.checkpoint.release import release_vrshq_config

    release, anchor = str(tiny_folder / "release"), str(tiny_folder / "anchor")
    config = release_vrshq_config(release, release_load.release_preset_config("tiny"), anchor=anchor)
    device = torch.device("cpu")
    streamed = release_load._load_streamed(release, anchor, config, device, torch.float32).state_dict()
    plain = release_load._load_plain(release, anchor, config, device, torch.float32).state_dict()
    assert streamed.keys() == plain.keys()
    assert all(torch.equal(streamed[k], plain[k]) for k in streamed)
