"""Joint mask propagation (method §5.3 steps 3-5) against single-object and stock SAM2 tracking."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import sam2.utils.misc
import torch

from PIL import Image
from sam2.modeling.sam2_base import NO_OBJ_SCORE

from vrshq.model import sam2_lockstep, sam2_model, sam2_tracking
from vrshq.sam2_config import sam2_tiny
from vrshq.model.sam2_model import connected_components, fill_holes_in_mask_scores
from vrshq.model.sam2_segmenter import Sam2Segmenter
from tests.unit._sam2_stock import stock_track

SIZE = 64


def make_segmenter(*, obj_bias: float = 3.0, **options) -> Sam2Segmenter:
    torch.manual_seed(0)
    seg = Sam2Segmenter(sam2_tiny(image_size=SIZE, **options))
    with torch.no_grad():
        seg.mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(obj_bias)
    return seg


def box_masks(boxes: list[tuple[int, int, int, int]]) -> torch.Tensor:
    masks = torch.zeros(len(boxes), SIZE, SIZE, dtype=torch.bool)
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        masks[i, y0:y1, x0:x1] = True
    return masks


def test_joint_tracking_equals_tracking_each_object_alone():
    seg = make_segmenter()
    frames = torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    feats = seg.encode_video(frames)
    keyframes = [0, 3, 7, 3]  # first frame, shared middle keyframe, last frame
    masks = box_masks([(5, 30, 5, 40), (20, 50, 10, 30), (0, 64, 40, 60), (30, 40, 30, 60)])
    joint = seg.track(feats, keyframes, masks)
    assert joint.low_res_logits.shape == (4, 8, SIZE // 4, SIZE // 4)
    assert joint.object_score_logits.shape == (4, 8)
    for obj, k in enumerate(keyframes):
        alone = seg.track(feats, [k], masks[obj : obj + 1])
        assert (joint.low_res_logits[obj] - alone.low_res_logits[0]).abs().max() < 1e-4
        assert (joint.object_score_logits[obj] - alone.object_score_logits[0]).abs().max() < 1e-4
        # the keyframe output is the inserted mask (±10 logits), object score +10
        assert joint.object_score_logits[obj, k] == 10.0
    full = seg.propagate(feats, keyframes, masks)
    assert full.shape == (4, 8, SIZE, SIZE)
    # the (E,T,S,S) logits are SAM2's bilinear upsampling of the S/4 logits
    up = torch.nn.functional.interpolate(joint.low_res_logits[:, 5:6], size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    torch.testing.assert_close(full[:, 5:6], up)
    assert ((full[1, 3] > 0) == masks[1]).float().mean() > 0.95


def _five_objects_on_24_frames():
    """A segmenter, the features of 24 frames and five objects with keyframes at both ends and inside."""
    seg = make_segmenter()
    frames = torch.randn(24, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    keyframes = [0, 2, 5, 20, 23]
    masks = box_masks([(5, 30, 5, 40), (20, 50, 10, 30), (0, 64, 40, 60), (30, 40, 30, 60), (2, 9, 2, 9)])
    return seg, seg.encode_video(frames), keyframes, masks


def _record_track_steps(monkeypatch, seg, describe) -> list:
    """Wrap ``seg.sam2.track_step``; every call appends ``describe(kwargs)`` to the returned list."""
    calls = []
    original = seg.sam2.track_step

    def counting(*args, **kwargs):
        calls.append(describe(kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(seg.sam2, "track_step", counting)
    return calls


def test_lockstep_runs_every_row_of_a_distance_in_one_step_and_stays_exact(monkeypatch):
    """One insertion for all objects, then one step per distance from the keyframes.

    Rows: a forward pass per keyframe < T-1, a backward pass per keyframe > 0, each as long as
    the frames it covers; step d batches every row that is still inside the video.
    """
    seg, feats, keyframes, masks = _five_objects_on_24_frames()
    calls = _record_track_steps(
        monkeypatch, seg, lambda kw: (kw["frame_idx"], kw["current_vision_feats"][-1].shape[1])
    )
    joint = seg.track(feats, keyframes, masks)
    monkeypatch.undo()
    # row lengths 23 (fwd 0, bwd 23), 21, 20, 18, 5, 3, 2
    lengths = [23, 23, 21, 20, 18, 5, 3, 2]
    expected = [(0, 5)] + [(d, sum(n >= d for n in lengths)) for d in range(1, 24)]
    assert calls == expected
    for obj, k in enumerate(keyframes):
        alone = seg.track(feats, [k], masks[obj : obj + 1])
        assert (joint.low_res_logits[obj] - alone.low_res_logits[0]).abs().max() < 1e-4
        assert (joint.object_score_logits[obj] - alone.object_score_logits[0]).abs().max() < 1e-4


def test_projected_memory_equals_stock_memory_attention(monkeypatch):
    """Lockstep tracking with each memory frame's keys/values projected once equals stock SAM2's
    memory attention (which re-projects every memory at every frame), and projects each frame once."""
    from vrshq.model import projected_memory

    seg, feats, keyframes, masks = _five_objects_on_24_frames()
    stock = seg.track(feats, keyframes, masks, project_memory_once=False)
    projections, conditioned = [], []
    project, condition = projected_memory._project_entry, projected_memory.condition_on_projected_memory

    def counting_project(model, entry, device):
        if projected_memory.PROJECTED_KEY not in entry:
            projections.append(entry["maskmem_features"].shape[0])
        return project(model, entry, device)

    def counting_condition(*args, **kwargs):
        conditioned.append(kwargs["frame_idx"])
        return condition(*args, **kwargs)

    monkeypatch.setattr(projected_memory, "_project_entry", counting_project)
    monkeypatch.setattr("vrshq.model.sam2_model.condition_on_projected_memory", counting_condition)
    fast = seg.track(feats, keyframes, masks)
    # every non-initial lockstep step (distances 1..23) went through the projected path
    assert conditioned == list(range(1, 24))
    # the keyframes' memory once, then each distance's memory once (22 of them are read again)
    assert len(projections) == 1 + 22
    assert (fast.low_res_logits - stock.low_res_logits).abs().max() < 1e-4
    assert (fast.object_score_logits - stock.object_score_logits).abs().max() < 1e-4
    assert torch.equal(fast.low_res_logits > 0, stock.low_res_logits > 0)


@pytest.mark.parametrize("rows_per_call", [2, 3])
def test_projected_memory_in_fixed_row_chunks_with_padding_is_unchanged(monkeypatch, rows_per_call):
    """The cuDNN layout (fixed rows per attention call, last call padded) on CPU: same result."""
    from vrshq.model import projected_memory

    seg, feats, keyframes, masks = _five_objects_on_24_frames()
    plain = seg.track(feats, keyframes, masks)
    monkeypatch.setattr(projected_memory, "CUDNN_DEVICE_TYPES", ("cpu",))
    monkeypatch.setattr(projected_memory, "CUDNN_ROWS_PER_CALL", rows_per_call)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(q, k, v, **kwargs):
        tokens = (SIZE // 16) ** 2  # memory attention: queries are a frame's tokens, keys at least as many
        if q.shape[2] == tokens and k.shape[2] >= tokens:
            calls.append((q.shape[0], k.shape[2] == tokens))
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(projected_memory.F, "scaled_dot_product_attention", recording)
    chunked = seg.track(feats, keyframes, masks)
    # self- and cross-attention, every call with the fixed row count
    assert set(calls) == {(rows_per_call, True), (rows_per_call, False)}
    assert (chunked.low_res_logits - plain.low_res_logits).abs().max() < 1e-5


def test_compiled_layer_work_equals_eager_layers(monkeypatch):
    """The layer work that ``COMPILE_LAYER_WORK`` hands to ``torch.compile`` (real-valued RoPE, the
    norms, projections and MLP between the attention calls) equals the eager layers, as the functions
    themselves on CPU; ``tests/gpu/test_gpu_tracking.py`` runs them through inductor on CUDA."""
    from vrshq.model import projected_memory

    seg, feats, keyframes, masks = _five_objects_on_24_frames()
    plain = seg.track(feats, keyframes, masks)
    monkeypatch.setattr(projected_memory, "CUDNN_DEVICE_TYPES", ("cpu",))
    monkeypatch.setattr(projected_memory, "CUDNN_ROWS_PER_CALL", 2)
    monkeypatch.setattr(projected_memory, "COMPILE_LAYER_WORK", True)
    monkeypatch.setattr(projected_memory, "_COMPILED", {})
    used = []
    monkeypatch.setattr(projected_memory, "_compiled", lambda fn: used.append(fn.__name__) or fn)
    compiled = seg.track(feats, keyframes, masks)
    assert used  # the compiled path ran
    assert (compiled.low_res_logits - plain.low_res_logits).abs().max() < 1e-4
    assert torch.equal(compiled.low_res_logits > 0, plain.low_res_logits > 0)


def test_projected_memory_is_off_where_it_cannot_apply():
    seg = make_segmenter()
    assert projected_memory_supported(seg)
    seg.sam2.train()
    assert not projected_memory_supported(seg)  # training: dropout and gradients take the stock path
    seg.sam2.eval()
    seg.sam2.memory_attention.layers[0].pos_enc_at_cross_attn_keys = False  # keys without position: no split
    assert not projected_memory_supported(seg)


def projected_memory_supported(seg: Sam2Segmenter) -> bool:
    from vrshq.model.projected_memory import supports_projected_memory

    return supports_projected_memory(seg.sam2)


def test_objects_past_the_per_pass_cap_are_tracked_in_more_passes_with_the_same_result(monkeypatch):
    seg, feats, keyframes, masks = _five_objects_on_24_frames()
    together = seg.track(feats, keyframes, masks)
    capped = make_segmenter(max_objects_per_track=2)
    capped.load_state_dict(seg.state_dict())
    calls = _record_track_steps(monkeypatch, capped, lambda kw: kw["is_init_cond_frame"])
    passes = capped.track(feats, keyframes, masks)
    assert calls.count(True) == 3  # one keyframe insertion per pass: objects 0-1, 2-3, 4
    assert (passes.low_res_logits - together.low_res_logits).abs().max() < 1e-4
    assert (passes.object_score_logits - together.object_score_logits).abs().max() < 1e-4
    with pytest.raises(ValueError, match="max_objects_per_track"):
        sam2_tiny(image_size=SIZE, max_objects_per_track=0)


def test_lockstep_is_used_only_where_it_is_exact():
    seg = make_segmenter()
    assert sam2_lockstep.lockstep_is_exact(seg.sam2)  # the VRS-HQ memory settings
    seg.sam2.memory_temporal_stride_for_eval = 3  # memories on a grid that moves with the keyframe
    assert not sam2_lockstep.lockstep_is_exact(seg.sam2)
    seg.sam2.memory_temporal_stride_for_eval = 1
    seg.sam2.non_overlap_masks_for_mem_enc = True  # the memory encoder mixes the batch's objects
    assert not sam2_lockstep.lockstep_is_exact(seg.sam2)


def test_groups_merge_once_far_from_their_keyframes_and_stay_exact(monkeypatch):
    """Grouped fallback: past 15 frames from the keyframe, groups of different keyframes share a batch."""
    monkeypatch.setattr(sam2_tracking, "lockstep_is_exact", lambda model: False)
    seg, feats, keyframes, masks = _five_objects_on_24_frames()
    calls = _record_track_steps(monkeypatch, seg, lambda kw: kw["current_vision_feats"][-1].shape[1])
    joint = seg.track(feats, keyframes, masks)
    joint_calls = list(calls)
    assert len(joint_calls) > 24  # grouped: more steps than the lockstep path
    singles = []
    for obj, k in enumerate(keyframes):
        singles.append(seg.track(feats, [k], masks[obj : obj + 1]))
    # forward: groups 0, 2 and 5 merge at frames 16, 18 and 21; backward: 23 and 20 at frame 4
    assert max(joint_calls) == 3 and 2 in joint_calls
    assert len(joint_calls) < len(calls) - len(joint_calls) - 10
    for obj, alone in enumerate(singles):
        assert (joint.low_res_logits[obj] - alone.low_res_logits[0]).abs().max() < 1e-4
        assert (joint.object_score_logits[obj] - alone.object_score_logits[0]).abs().max() < 1e-4


def _stock_tracking(model, folder: str, keyframe: int, mask: torch.Tensor) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """The stock SAM2VideoPredictor, driven as VRS-HQ drives it (method §5.3 steps 3-4)."""
    out, state = stock_track(model, folder, keyframe, mask)
    return out, state["images"]


@pytest.mark.parametrize("keyframe", [2, 19])
def test_single_object_matches_stock_video_predictor(tmp_path, monkeypatch, keyframe):
    # sam2._C is not built here: give the stock hole filling the same CPU components
    monkeypatch.setattr(sam2.utils.misc, "get_connected_components", connected_components)
    # the stock predictor stores memory features in bf16: store ours the same way to compare
    seg = make_segmenter(memory_dtype="bfloat16")
    rng = np.random.default_rng(0)
    num_frames = 20  # > 16 object pointers and 7 memories: exercises memory pruning
    for t in range(num_frames):
        Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(tmp_path / f"{t:05d}.jpg")
    mask = box_masks([(10, 40, 12, 50)])[0]
    stock, images = _stock_tracking(seg.sam2, str(tmp_path), keyframe, mask)
    ours = seg.propagate(seg.encode_video(images), [keyframe], mask[None])
    assert sorted(stock) == list(range(num_frames))
    for t in range(num_frames):
        assert (ours[0, t] - stock[t]).abs().max() < 1e-4, t
    assert (ours[0] > 0).float().mean() > 0.05  # not a degenerate empty track


def test_float32_memory_is_close_to_bf16_memory():
    frames = torch.randn(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    mask = box_masks([(10, 40, 12, 50)])
    results = []
    for dtype in (None, "bfloat16"):
        seg = make_segmenter(memory_dtype=dtype, offload_memory_to_cpu=True, offload_features_to_cpu=True)
        results.append(seg.track(seg.encode_video(frames), [1], mask).low_res_logits)
    diff = (results[0] - results[1]).abs().max()
    assert 0 < diff < 1.0


def test_object_score_gate_empties_absent_frames():
    seg = make_segmenter(obj_bias=-3.0)
    feats = seg.encode_video(torch.randn(4, 3, SIZE, SIZE))
    result = seg.track(feats, [1], box_masks([(10, 40, 12, 50)]))
    others = [0, 2, 3]
    assert torch.equal(result.low_res_logits[0, others], torch.full((3, SIZE // 4, SIZE // 4), NO_OBJ_SCORE))
    assert (result.object_score_logits[0, others] < 0).all()
    assert result.object_score_logits[0, 1] == 10.0


def test_track_validates_inputs():
    seg = make_segmenter()
    feats = seg.encode_video(torch.randn(3, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match="keyframe_masks"):
        seg.track(feats, [0, 1], box_masks([(0, 4, 0, 4)]))
    with pytest.raises(ValueError, match="outside"):
        seg.track(feats, [3], box_masks([(0, 4, 0, 4)]))


def test_offloaded_features_live_on_cpu_and_give_the_same_result():
    frames = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    mask = box_masks([(10, 40, 12, 50)])
    plain = make_segmenter()
    offloaded = make_segmenter(offload_features_to_cpu=True, encode_chunk_size=3)
    feats = offloaded.encode_video(frames)
    assert all(x.device.type == "cpu" for x in feats.backbone_fpn) and feats.num_frames == 4
    assert dataclasses.asdict(offloaded.cfg)["encode_chunk_size"] == 3
    a = plain.track(plain.encode_video(frames), [2], mask).low_res_logits
    b = offloaded.track(feats, [2], mask).low_res_logits
    assert (a - b).abs().max() < 1e-4


def test_long_videos_offload_their_features_by_length():
    """Past ``offload_features_min_frames`` frames a video's features and logits go to the CPU."""
    cfg = sam2_tiny(image_size=SIZE, offload_features_min_frames=600)
    assert not cfg.offloads_features(599) and cfg.offloads_features(600)
    assert sam2_tiny(image_size=SIZE, offload_features_to_cpu=True).offloads_features(1)
    assert not sam2_tiny(image_size=SIZE, offload_features_min_frames=None).offloads_features(10**6)
    with pytest.raises(ValueError, match="offload_features_min_frames"):
        sam2_tiny(image_size=SIZE, offload_features_min_frames=0)


@pytest.mark.parametrize("max_area", [1, 2, 8, 20])
def test_hole_filling_on_device_equals_connected_components(max_area):
    """The sync-free hole filling used on GPUs without sam2._C equals the OpenCV components version."""
    gen = torch.Generator().manual_seed(max_area)
    for _ in range(25):
        h, w = (int(v) for v in torch.randint(1, 40, (2,), generator=gen))
        density = float(torch.rand(1, generator=gen)) * 0.9 + 0.05
        noise = torch.randn(8, 1, h, w, generator=gen)
        logits = noise + (torch.rand(8, 1, h, w, generator=gen) < density).float() * 3 - 1.5
        expected = fill_holes_in_mask_scores(logits, max_area)
        assert torch.equal(sam2_model.fill_small_holes_on_device(logits, max_area), expected), (h, w, density)
    # a hole at the border, a 9-pixel hole next to an 8-pixel one, a long thin background line
    logits = torch.ones(1, 1, 12, 12)
    logits[0, 0, 0, :2] = -1  # 2 px at the border
    logits[0, 0, 3:6, 3:6] = -1  # 9 px
    logits[0, 0, 3:5, 8:12] = -1  # 8 px
    logits[0, 0, 9, :] = -1  # 12 px
    expected = fill_holes_in_mask_scores(logits, 8)
    assert torch.equal(sam2_model.fill_small_holes_on_device(logits, 8), expected)
    assert (expected[0, 0, 3:5, 8:12] == 0.1).all() and (expected[0, 0, 3:6, 3:6] == -1).all()


def test_tracking_with_on_device_hole_filling_is_unchanged(monkeypatch):
    seg = make_segmenter()
    feats = seg.encode_video(torch.randn(6, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5)))
    masks = box_masks([(5, 30, 5, 40), (20, 50, 10, 30)])
    plain = seg.track(feats, [1, 4], masks)
    monkeypatch.setattr(sam2_tracking, "fill_holes", sam2_model.fill_small_holes_on_device)
    monkeypatch.setattr(sam2_lockstep, "fill_holes", sam2_model.fill_small_holes_on_device)
    on_device = seg.track(feats, [1, 4], masks)
    assert torch.equal(plain.low_res_logits, on_device.low_res_logits)


def test_lockstep_bank_trims_rows_to_the_active_prefix_and_prunes_by_distance():
    """Unit view of the lockstep memory: rows only ever leave from the end; entries are views."""
    pos = [torch.arange(4.0).view(4, 1, 1, 1)]

    def entry(value: float, rows: int) -> dict[str, torch.Tensor]:
        return {"maskmem_features": torch.full((rows, 2, 1, 1), value), "maskmem_pos_enc": pos,
                "obj_ptr": torch.full((rows, 3), value), "object_score_logits": torch.full((rows, 1), value)}

    bank = sam2_lockstep.LockstepBank(
        output_dict={"cond_frame_outputs": {0: entry(-1.0, 4)}, "non_cond_frame_outputs": {}},
        maskmem_pos_enc=pos, rows=4,
    )
    for d in range(1, 5):
        bank.keep_rows(4 if d < 3 else 2)
        out = {"maskmem_features": torch.full((bank.rows, 2, 1, 1), float(d)), "obj_ptr": torch.zeros(bank.rows, 3),
               "object_score_logits": torch.zeros(bank.rows, 1)}
        bank.store(d, out, memory_dtype=torch.bfloat16, memory_device=torch.device("cpu"))
        bank.prune(d, reach=2)
    entries = bank.output_dict["non_cond_frame_outputs"]
    assert sorted(entries) == [3, 4]  # distances 1, 2 are out of reach after 4
    cond = bank.output_dict["cond_frame_outputs"][0]
    assert cond["maskmem_features"].shape[0] == 2 and cond["obj_ptr"].shape[0] == 2
    assert all(e["maskmem_features"].dtype == torch.bfloat16 for e in entries.values())
    assert bank.maskmem_pos_enc[0].shape[0] == 2 and cond["maskmem_pos_enc"] is bank.maskmem_pos_enc
