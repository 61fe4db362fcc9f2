"""VisualTokenizer: frozen CLIP tower -> select layer, CLS dropped -> DPC-KNN merge -> projector."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from vrshq.model.token_merging import dpc_knn_merge
from vrshq.model.vision import VisionWeightsError, VisualTokenizer
from vrshq.vision_config import tiny_vision_tower



@pytest.fixture(scope="module")
def tokenizer() -> VisualTokenizer:
    torch.manual_seed(0)
    return VisualTokenizer(tiny_vision_tower())


def _frames(n: int, height: int = 40, width: int = 60, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, height, width, 3), generator=gen, dtype=torch.uint8)


def test_output_shape_comes_from_config(tokenizer):
    cfg = tokenizer.cfg
    pixels = tokenizer.preprocess(_frames(3))
    assert pixels.shape == (3, 3, cfg.image_size, cfg.image_size)
    out = tokenizer(pixels)
    assert out.shape == (3, cfg.tokens_per_frame, cfg.projector_out_dim)
    assert tokenizer.tokens_per_frame == sum(cfg.merge.cluster_counts) == 28


def test_select_layer_minus_two_is_output_of_second_to_last_layer(tokenizer):
    # hidden_states[-2] must equal the last hidden state of the same tower with its last layer removed.
    pixels = tokenizer.preprocess(_frames(2))
    truncated = copy.deepcopy(tokenizer.vision_tower)
    # transformers 4.x nests the encoder under .vision_model; 5.x puts it on CLIPVisionModel itself
    encoder = getattr(truncated, "vision_model", truncated).encoder
    encoder.layers = encoder.layers[:-1]
    with torch.no_grad():
        expected = truncated(pixel_values=pixels).last_hidden_state[:, 1:]
    patches = tokenizer.encode_patches(pixels)
    assert patches.shape == (2, tokenizer.cfg.num_patches, tokenizer.cfg.hidden_size)
    torch.testing.assert_close(patches, expected)


def test_forward_is_tower_then_merge_then_projector(tokenizer):
    pixels = tokenizer.preprocess(_frames(2, seed=1))
    with torch.no_grad():
        hidden = tokenizer.vision_tower(pixel_values=pixels, output_hidden_states=True).hidden_states
        patches = hidden[tokenizer.cfg.select_layer][:, 1:]
        merged = dpc_knn_merge(patches, cluster_counts=(16, 8, 4), knn_k=(5, 3, 3))
        expected = merged @ tokenizer.projector.weight.T + tokenizer.projector.bias
        actual = tokenizer(pixels)
    torch.testing.assert_close(actual, expected)


def test_batched_equals_one_frame_at_a_time(tokenizer):
    pixels = tokenizer.preprocess(_frames(5, seed=2))
    with torch.no_grad():
        batched = tokenizer(pixels)
        single = torch.cat([tokenizer(pixels[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)


def test_tower_frozen_and_in_eval_projector_trainable(tokenizer):
    assert all(not p.requires_grad for p in tokenizer.vision_tower.parameters())
    assert all(p.requires_grad for p in tokenizer.projector.parameters())
    tokenizer.train()
    assert tokenizer.training and tokenizer.projector.training and not tokenizer.vision_tower.training
    pixels = tokenizer.preprocess(_frames(2, seed=3))
    tokenizer(pixels).sum().backward()
    assert tokenizer.projector.weight.grad is not None and tokenizer.projector.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in tokenizer.vision_tower.parameters())
    tokenizer.projector.zero_grad(set_to_none=True)
    tokenizer.eval()


def test_trainable_tower_gets_gradients_through_the_merge():
    torch.manual_seed(0)
    tok = VisualTokenizer(tiny_vision_tower())
    pixels = tok.preprocess(_frames(2, seed=4))
    frozen_out = tok(pixels)
    tok.set_tower_trainable(True)
    assert tok.tower_trainable and not tok.vision_tower.training  # trains, but stays without dropout
    out = tok(pixels)
    torch.testing.assert_close(out, frozen_out)  # the same function, now with a graph
    out.sum().backward()
    # select_layer -2: the last layer and the post-norm are unused; the embeddings and layer 0 all learn
    used = {n: p for n, p in tok.vision_tower.named_parameters() if "embeddings." in n or "layers.0." in n}
    assert len(used) > 10 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in used.values())
    tok.set_tower_trainable(False)
    assert not tok.tower_trainable
    with torch.no_grad():  # inference stays graph-free either way
        assert not tok(pixels).requires_grad


def test_bf16_runs_and_keeps_dtype():
    torch.manual_seed(0)
    vt = VisualTokenizer(tiny_vision_tower()).to(torch.bfloat16)
    pixels = vt.preprocess(_frames(2))
    assert pixels.dtype == torch.bfloat16
    with torch.no_grad():
        out = vt(pixels)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 28, 32) and torch.isfinite(out.float()).all()


def test_exact_real_token_structure_on_toy_tower():
    # 32 px / patch 2 = 256 patches merged 64 + 32 + 16 = 112, the real structure at toy width.
    cfg = tiny_vision_tower(image_size=32, patch_size=2, cluster_counts=(64, 32, 16), projector_out_dim=8)
    vt = VisualTokenizer(cfg)
    with torch.no_grad():
        out = vt(vt.preprocess(_frames(1, 24, 24)))
    assert cfg.num_patches == 256 and out.shape == (1, 112, 8)


def test_loads_local_weights_and_rejects_missing_dir(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_vision_tower()
    source = VisualTokenizer(cfg)
    source.vision_tower.save_pretrained(tmp_path / "clip")
    loaded = VisualTokenizer(dataclasses.replace(cfg, weights_path=str(tmp_path / "clip")))
    for (name, a), (_, b) in zip(
        source.vision_tower.state_dict().items(), loaded.vision_tower.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    with pytest.raises(VisionWeightsError, match="openai/clip-vit-large-patch14"):
        VisualTokenizer(dataclasses.replace(cfg, weights_path=str(tmp_path / "nowhere")))
    mismatched = tiny_vision_tower(num_hidden_layers=3)
    with pytest.raises(ValueError, match="num_hidden_layers"):
        VisualTokenizer(dataclasses.replace(mismatched, weights_path=str(tmp_path / "clip")))


def test_bad_pixels_raise(tokenizer):
    with pytest.raises(ValueError, match=r"\(N, 3, 56, 56\)"):
        tokenizer(torch.zeros(1, 3, 32, 32))
    with pytest.raises(TypeError, match="float"):
        tokenizer(torch.zeros(1, 3, 56, 56, dtype=torch.uint8))
    with pytest.raises(TypeError, match="VisionTowerConfig"):
        VisualTokenizer({"hidden_size": 32})


def test_centroid_position_scale_adds_the_projected_centroid_embedding_of_each_cluster():
    from vrshq.model.token_merging import grid_position_embedding

    torch.manual_seed(0)
    plain = VisualTokenizer(tiny_vision_tower())
    placed = VisualTokenizer(tiny_vision_tower(centroid_position_scale=1.5))
    placed.load_state_dict(plain.state_dict())
    pixels = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        patches = plain.encode_patches(pixels)
        positions = 1.5 * grid_position_embedding(8, patches.shape[-1])
        expected = dpc_knn_merge(patches, cluster_counts=(16, 8, 4), knn_k=(5, 3, 3), positions=positions)
        torch.testing.assert_close(placed(pixels), placed.projector(expected))
        assert not torch.allclose(placed(pixels), plain(pixels))
