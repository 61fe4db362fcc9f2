"""Sam2Segmenter on the tiny preset: prompt decode, gating, hole filling, training window."""

from __future__ import annotations

import pytest
import torch
from sam2.modeling.sam2_base import NO_OBJ_SCORE

from vrshq.sam2_config import sam2_tiny
from vrshq.model.sam2_model import connected_components, fill_holes_in_mask_scores
from vrshq.model.sam2_segmenter import Sam2Segmenter

SIZE = 64


def make_segmenter(*, obj_bias: float = 3.0, seed: int = 0) -> Sam2Segmenter:
    """Tiny random SAM2; ``obj_bias`` sets the object-score head bias (>0: object present)."""
    torch.manual_seed(seed)
    seg = Sam2Segmenter(sam2_tiny(image_size=SIZE))
    with torch.no_grad():
        seg.mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(obj_bias)
    return seg


def video(num_frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(num_frames, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_prompt_encoder_pads_dummy_point_to_two_not_a_point_tokens():
    seg = make_segmenter()
    coords = torch.zeros(2, 1, 2)
    labels = -torch.ones(2, 1, dtype=torch.int32)
    sparse, dense = seg.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    assert sparse.shape == (2, 2, seg.prompt_embed_dim)
    not_a_point = seg.prompt_encoder.not_a_point_embed.weight[0]
    torch.testing.assert_close(sparse, not_a_point.expand(2, 2, -1))
    no_mask = seg.prompt_encoder.no_mask_embed.weight[0]
    torch.testing.assert_close(dense, no_mask[None, :, None, None].expand(2, -1, SIZE // 16, SIZE // 16))


def test_decode_sparse_layout_is_pad_pad_prompt():
    seg = make_segmenter()
    feats = seg.encode_video(video(3))
    captured = {}

    def hook(_module, _args, kwargs):
        captured.update(kwargs)

    handle = seg.mask_decoder.register_forward_pre_hook(hook, with_kwargs=True)
    prompts = torch.randn(4, seg.prompt_embed_dim)
    with torch.no_grad():
        seg.decode_prompts(feats, torch.tensor([0, 1, 1, 2]), prompts)
    handle.remove()
    sparse = captured["sparse_prompt_embeddings"]
    assert sparse.shape == (4, 3, seg.prompt_embed_dim)
    not_a_point = seg.prompt_encoder.not_a_point_embed.weight[0]
    torch.testing.assert_close(sparse[:, 0], not_a_point.expand(4, -1))
    torch.testing.assert_close(sparse[:, 1], not_a_point.expand(4, -1))
    torch.testing.assert_close(sparse[:, 2], prompts)
    assert captured["multimask_output"] is False
    # SAM2-as-image: top-level feature + no_mem_embed (no memory attention)
    top = feats.backbone_fpn[-1][[0, 1, 1, 2]]
    expected = top + seg.sam2.no_mem_embed.view(1, -1, 1, 1)
    torch.testing.assert_close(captured["image_embeddings"], expected)


def test_decode_shapes_and_batched_equals_one_at_a_time():
    seg = make_segmenter()
    feats = seg.encode_video(video(4))
    frames = torch.tensor([0, 3, 1, 3, 2])
    prompts = torch.randn(5, seg.prompt_embed_dim)
    with torch.no_grad():
        batched = seg.decode_prompts(feats, frames, prompts)
        singles = [seg.decode_prompts(feats, frames[i : i + 1], prompts[i : i + 1]) for i in range(5)]
        chunked = seg.decode_prompts(feats, frames, prompts, chunk_size=2)
    assert batched.low_res_logits.shape == (5, 1, SIZE // 4, SIZE // 4)
    assert batched.high_res_logits.shape == (5, 1, SIZE, SIZE)
    assert batched.object_score_logits.shape == (5,)
    for name in ("low_res_logits", "object_score_logits", "high_res_logits"):
        one = torch.cat([getattr(s, name) for s in singles])
        torch.testing.assert_close(getattr(batched, name), one, atol=1e-5, rtol=0)
        torch.testing.assert_close(getattr(chunked, name), one, atol=1e-5, rtol=0)
    # different prompts on the same frame give different masks (the prompt is used)
    assert (batched.low_res_logits[1] - batched.low_res_logits[3]).abs().max() > 1e-3


def test_decode_validates_shapes():
    seg = make_segmenter()
    feats = seg.encode_video(video(2))
    with pytest.raises(ValueError, match="prompt_embeds"):
        seg.decode_prompts(feats, torch.tensor([0]), torch.zeros(1, 256))
    with pytest.raises(IndexError, match="out of range"):
        seg.decode_prompts(feats, torch.tensor([2]), torch.zeros(1, seg.prompt_embed_dim))
    with pytest.raises(ValueError, match="letterboxed"):
        seg.encode_video(torch.zeros(2, 3, 32, 32))


def test_object_score_gate_only_in_eval():
    seg = make_segmenter(obj_bias=-3.0)
    feats = seg.encode_video(video(2))
    prompts = torch.randn(2, seg.prompt_embed_dim)
    with torch.no_grad():
        gated = seg.decode_prompts(feats, torch.tensor([0, 1]), prompts)
        assert (gated.object_score_logits < 0).all()
        assert torch.equal(gated.low_res_logits, torch.full_like(gated.low_res_logits, NO_OBJ_SCORE))
        assert torch.equal(gated.high_res_logits, torch.full_like(gated.high_res_logits, NO_OBJ_SCORE))
        seg.train()
        ungated = seg.decode_prompts(feats, torch.tensor([0, 1]), prompts)
    assert ungated.low_res_logits.abs().max() < 100 and ungated.low_res_logits.std() > 0
    torch.testing.assert_close(ungated.object_score_logits, gated.object_score_logits)


def test_connected_components_and_hole_filling_use_8_connectivity():
    logits = torch.full((1, 1, 12, 12), 5.0)
    logits[0, 0, 1:3, 1:3] = -5.0  # hole of 4 px -> filled
    logits[0, 0, 6:9, 1:4] = -5.0  # hole of 9 px -> kept (> 8)
    logits[0, 0, 1:3, 6:9] = -5.0  # 6 px ...
    logits[0, 0, 3:5, 9:12] = -5.0  # ... + 6 px touching diagonally = one 12 px hole -> kept
    labels, areas = connected_components(logits <= 0)
    assert labels.dtype == torch.int32 and labels.shape == logits.shape
    assert int(areas[0, 0, 1, 1]) == 4 and int(areas[0, 0, 7, 2]) == 9 and int(areas[0, 0, 1, 6]) == 12
    assert labels[0, 0, 1, 6] == labels[0, 0, 4, 11] and labels[0, 0, 0, 0] == 0
    filled = fill_holes_in_mask_scores(logits, 8)
    expected = logits.clone()
    expected[0, 0, 1:3, 1:3] = 0.1
    assert torch.equal(filled, expected)


def window_inputs(seg: Sam2Segmenter, batch: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, 3, SIZE, SIZE, generator=gen)
    prompts = torch.randn(batch, seg.prompt_embed_dim, generator=gen)
    return images, prompts


def test_train_window_gradients_reach_prompt_and_mask_decoder_only():
    seg = make_segmenter()
    seg.set_trainable("mask_decoder")
    seg.train()
    images, prompts = window_inputs(seg, 3)
    prompts.requires_grad_(True)
    out = seg.train_window_forward(images, torch.tensor([0, 1, 2]), prompts)
    assert out.logits.shape == (3, 3, SIZE, SIZE) and out.object_score_logits.shape == (3, 3)
    # loss only on the non-conditioning frames: gradient must come through SAM2's memory
    non_cond = torch.tensor([[0, 1, 1], [1, 0, 1], [1, 1, 0]], dtype=torch.bool)
    (out.logits[non_cond].sigmoid().mean() + out.object_score_logits.sum()).backward()
    assert (prompts.grad.abs().sum(dim=1) > 0).all()
    assert seg.mask_decoder.conv_s0.weight.grad is not None
    assert seg.mask_decoder.output_hypernetworks_mlps[0].layers[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in seg.image_encoder.parameters())
    assert all(p.grad is None for p in seg.memory_attention.parameters())


def test_train_everything_mode_backpropagates_into_image_encoder():
    seg = make_segmenter()
    params = seg.set_trainable("all")
    assert len(params) == len(list(seg.sam2.parameters()))
    seg.train()
    images, prompts = window_inputs(seg, 1)
    seg.train_window_forward(images, torch.tensor([1]), prompts).logits.mean().backward()
    assert seg.image_encoder.trunk.patch_embed.proj.weight.grad.abs().sum() > 0


def test_train_window_conditioning_frame_equals_training_decode():
    seg = make_segmenter(obj_bias=-3.0)  # absent object: must still be ungated in training
    seg.train()
    images, prompts = window_inputs(seg, 2)
    with torch.no_grad():
        out = seg.train_window_forward(images, torch.tensor([2, 0]), prompts)
        feats = seg.encode_video(torch.stack([images[0, 2], images[1, 0]]))
        dec = seg.decode_prompts(feats, torch.tensor([0, 1]), prompts)
    torch.testing.assert_close(out.logits[0, 2], dec.high_res_logits[0, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.logits[1, 0], dec.high_res_logits[1, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.object_score_logits[[0, 1], [2, 0]], dec.object_score_logits, atol=1e-5, rtol=0)
    assert out.logits.abs().max() < 100  # no -1024 gate in training


@pytest.mark.parametrize(
    ("cond", "perturbed", "unaffected"),
    [(0, 2, [0, 1]), (2, 0, [1, 2]), (1, 0, [1, 2]), (1, 2, [0, 1])],
)
def test_train_window_direction_logic(cond, perturbed, unaffected):
    """Frames are tracked away from the conditioning frame; each direction has fresh memory."""
    seg = make_segmenter()
    seg.train()
    images, prompts = window_inputs(seg, 1)
    changed = images.clone()
    changed[0, perturbed] = torch.randn(3, SIZE, SIZE)
    with torch.no_grad():
        torch.manual_seed(5)  # memory-attention dropout is active in training
        ref = seg.train_window_forward(images, torch.tensor([cond]), prompts).logits
        torch.manual_seed(5)
        new = seg.train_window_forward(changed, torch.tensor([cond]), prompts).logits
    for pos in unaffected:
        torch.testing.assert_close(new[0, pos], ref[0, pos], atol=1e-6, rtol=0)
    assert (new[0, perturbed] - ref[0, perturbed]).abs().max() > 1e-3


def test_train_window_validates_inputs():
    seg = make_segmenter()
    images, prompts = window_inputs(seg, 2)
    with pytest.raises(ValueError, match="cond_pos"):
        seg.train_window_forward(images, torch.tensor([0, 3]), prompts)
    with pytest.raises(ValueError, match=r"cond_pos must be \(B,\) in \[0, 2\)"):  # the window is images.shape[1]
        seg.train_window_forward(images[:, :2], torch.tensor([0, 2]), prompts)
    with pytest.raises(ValueError, match="the window has no frames"):
        seg.train_window_forward(images[:, :0], torch.tensor([0, 0]), prompts)
    with pytest.raises(ValueError, match="set_trainable"):
        seg.set_trainable("decoder")
