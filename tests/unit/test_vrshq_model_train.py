"""`VrshqModel.forward` (training, method §4-§6) on the tiny preset: outputs, losses, trainable sets."""

from __future__ import annotations

import dataclasses
import random

import torch

from vrshq.builders import build_vrshq, tiny_config
from vrshq.model.outputs import make_train_batch
from vrshq.model.tks import largest_target_keyframe

T, H, W = 8, 30, 44


def _batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    frames_a = torch.randint(0, 255, (T, H, W, 3), dtype=torch.uint8, generator=gen)
    masks_a = torch.zeros(2, T, H, W, dtype=torch.bool)
    masks_a[0, :, 4:14, 5:20] = True
    masks_a[1, :, 16:26, 22:40] = True
    frames_b = torch.randint(0, 255, (T + 1, H + 4, W - 6, 3), dtype=torch.uint8, generator=gen)
    masks_b = torch.zeros(1, T + 1, H + 4, W - 6, dtype=torch.bool)
    masks_b[0, 3:, 10:20, 10:20] = True
    return make_train_batch(
        [(frames_a, ["the red circle", "which square moves?"], masks_a), (frames_b, ["green ball"], masks_b)],
        rng=random.Random(seed),
    )


def _step(model, batch, *, lr: float = 1e-2):
    model.train()
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    trainable = [p for p in params.values() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    optimizer.zero_grad()
    out = model(batch)
    out.loss.backward()
    with_grad = {n for n, p in params.items() if p.grad is not None and bool(p.grad.abs().sum() > 0)}
    optimizer.step()
    changed = {n for n, p in params.items() if not torch.equal(p.detach(), before[n])}
    model.eval()
    return out, changed, with_grad, {n for n, p in params.items() if p.requires_grad}


def test_forward_outputs_follow_the_method():
    torch.manual_seed(0)
    cfg = tiny_config(trainable="none")
    cfg = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, tda_alpha=0.5))
    model = build_vrshq(cfg).train()
    batch = _batch()
    with torch.no_grad():
        out = model(batch)
    b, n, d = out.seg_embeds.shape
    assert (b, n, d) == (3, T + 1, cfg.method.seg_embed_dim)
    assert out.frame_mask.sum(1).tolist() == [T, T, T + 1]
    # TDA with the configured alpha (0.5 reaches the model), keyframe = argmax of the weights (§3, §4)
    fused = out.tak_embed.float() + 0.5 * (out.keyframe_scores.unsqueeze(-1) * out.seg_embeds.float()).sum(1)
    torch.testing.assert_close(out.fused_tak, fused)
    assert out.keyframe_idx.tolist() == out.keyframe_scores.argmax(1).tolist()
    for k, pos, mask in zip(out.keyframe_idx.tolist(), out.window_positions.tolist(), out.frame_mask):
        assert k in pos and pos == list(range(pos[0], pos[0] + 3)) and pos[-1] < int(mask.sum())
    # losses at GT resolution, 1 CE + 2 BCE + 0.5 DICE (§6)
    assert [tuple(m.shape) for m in out.mask_logits] == [(3, H, W), (3, H, W), (3, H + 4, W - 6)]
    torch.testing.assert_close(out.loss, out.ce_loss + 2.0 * out.bce_loss + 0.5 * out.dice_loss)
    assert torch.isfinite(out.loss) and out.ce_loss > 0 and out.bce_loss > 0 and 0 < out.dice_loss <= 1


def test_lora_step_changes_exactly_the_trainable_parameters():
    torch.manual_seed(1)
    model = build_vrshq(tiny_config(trainable="lora"))
    _, changed, with_grad, trainable = _step(model, _batch(1))
    assert changed <= trainable
    assert with_grad <= changed  # every trainable parameter that received a gradient moved
    frozen_changed = changed - trainable
    assert not frozen_changed
    # the method's set (method §6): LoRA on q/v, lm_head, embed_tokens, SAM2 mask decoder, seg head
    lora = {n for n in trainable if "lora_" in n}
    assert lora and all(("q_proj" in n or "v_proj" in n) and n.startswith("mllm.llm.model.layers.") for n in lora)
    expected_trainable = lora | {
        "mllm.llm.model.embed_tokens.weight",
        "mllm.llm.lm_head.weight",
        *(n for n, _ in model.named_parameters() if n.startswith(("seg_head.", "sam2.sam2.sam_mask_decoder."))),
    }
    assert trainable == expected_trainable
    for prefix in ("mllm.llm.model.embed_tokens", "mllm.llm.lm_head", "seg_head.", "sam2.sam2.sam_mask_decoder."):
        assert any(n.startswith(prefix) for n in changed), prefix
    assert any("lora_B" in n for n in changed)
    frozen_parts = ("vision.", "anchor.", "sam2.sam2.image_encoder", "sam2.sam2.memory_")
    assert not any(n.startswith(frozen_parts) for n in changed)
    assert not any(n.endswith("q_proj.base_layer.weight") for n in changed)


def test_train_all_step_trains_every_part():
    torch.manual_seed(2)
    cfg = tiny_config(trainable="all", object_weight=0.5)
    model = build_vrshq(cfg)
    out, changed, with_grad, trainable = _step(model, _batch(2))
    assert changed <= trainable and with_grad <= changed
    assert out.object_loss > 0
    frozen = {n for n, _ in model.named_parameters()} - trainable
    # only the CLIP towers, which run without autograd by design, stay frozen
    assert frozen and all(n.startswith(("vision.vision_tower.", "anchor.")) for n in frozen)
    from vrshq.model.trainable import trainable_parameter_groups

    groups = trainable_parameter_groups(model)
    assert len(groups["sam2"]) + len(groups["text"]) == len(trainable)
    sam2_trainable = {id(p) for n, p in model.named_parameters() if n.startswith("sam2.") and p.requires_grad}
    assert {id(p) for p in groups["sam2"]} == sam2_trainable
    for prefix in (
        "vision.projector.",
        "mllm.llm.model.layers.0.self_attn.q_proj.weight",
        "mllm.llm.model.layers.1.mlp.",
        "seg_head.",
        "sam2.sam2.image_encoder.",
        "sam2.sam2.memory_attention.",
        "sam2.sam2.sam_mask_decoder.pred_obj_score_head.",
    ):
        assert any(n.startswith(prefix) for n in changed), prefix


def test_merge_lora_keeps_outputs_and_restores_plain_names():
    from vrshq.model.trainable import has_lora, merge_lora

    torch.manual_seed(3)
    model = build_vrshq(tiny_config(trainable="lora"))
    llm = model.mllm.llm.eval()
    with torch.no_grad():
        for name, param in llm.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # B starts at zero; make the adapters matter
        ids = torch.tensor([[1, 5, 9, 12, 40]])
        before = llm(input_ids=ids).logits
        assert merge_lora(model) == 2 * llm.config.num_hidden_layers
        after = llm(input_ids=ids).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    assert not has_lora(model)
    names = [n for n, _ in model.named_parameters()]
    assert "mllm.llm.model.layers.0.self_attn.q_proj.weight" in names
    assert not any("lora_" in n or "base_layer" in n for n in names)


def test_visual_tokens_of_clips_encoded_together_equal_one_call_per_clip():
    torch.manual_seed(0)
    model = build_vrshq(tiny_config())
    gen = torch.Generator().manual_seed(3)
    clips = [torch.randint(0, 255, (n, h, w, 3), dtype=torch.uint8, generator=gen)
             for n, h, w in ((3, 30, 44), (1, 30, 44), (2, 34, 38), (4, 30, 44))]
    with torch.no_grad():
        together = model._encode_visual_clips(clips)
        alone = [model.encode_visual(c) for c in clips]
    for a, b in zip(together, alone):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_text_path_gives_the_fused_tak_and_ce_of_the_training_forward_without_sam2():
    torch.manual_seed(0)
    model = build_vrshq(tiny_config(trainable="none")).train()
    batch = _batch()
    with torch.no_grad():
        out = model(batch)

        def no_sam2(*args, **kwargs):
            raise AssertionError("text_path ran SAM2")

        model._sam2_train_forward = no_sam2
        fused, ce = model.text_path(batch)
    torch.testing.assert_close(fused, out.fused_tak)
    torch.testing.assert_close(ce, out.ce_loss)


def test_visual_chunks_bound_the_hidden_state_not_the_frame_count():
    from vrshq.vision_config import VisionTowerConfig
    from vrshq.model.vrshq_model import CPU_VISUAL_CHUNK_FRAMES, VISUAL_CHUNK_VALUES

    model = build_vrshq(tiny_config())
    tiny = model.vision.cfg
    per_frame = ((tiny.image_size // tiny.patch_size) ** 2 + 1) * tiny.hidden_size
    assert VISUAL_CHUNK_VALUES // per_frame > CPU_VISUAL_CHUNK_FRAMES
    assert model.visual_chunk_frames() == CPU_VISUAL_CHUNK_FRAMES  # on the CPU: capped
    model.to("meta")  # a tensor's device is all the rule reads
    assert model.visual_chunk_frames() == VISUAL_CHUNK_VALUES // per_frame
    model = build_vrshq(tiny_config())
    model.vision.cfg = VisionTowerConfig()  # CLIP ViT-L/14 at 224: 257 tokens of 1024
    assert model.visual_chunk_frames() == 32
    model.vision.cfg = tiny
    frames = torch.randint(0, 255, (5, 30, 44, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.encode_visual(frames), model.encode_visual(frames, chunk_size=2),
                                   rtol=1e-5, atol=1e-6)


def test_encode_prompt_caches_per_tokenizer_and_matches_the_function():
    import copy

    from vrshq.model.prompts import encode_prompt, inference_prompt

    model = build_vrshq(tiny_config())
    prompt = inference_prompt("the small red circle", 3)
    first = model.encode_prompt(prompt)
    assert first == encode_prompt(model.tokenizer, prompt)
    assert model.encode_prompt(prompt) is first  # cached
    model.tokenizer = copy.deepcopy(model.tokenizer)  # another tokenizer: its own encodings
    again = model.encode_prompt(prompt)
    assert again is not first and again == first


def test_largest_target_keyframe_rule_trains_on_the_frame_of_the_largest_target():
    torch.manual_seed(0)
    cfg = tiny_config(trainable="none")
    model = build_vrshq(cfg).train()
    model.train_keyframe_rule = largest_target_keyframe
    batch = _batch()
    grow = batch.videos[0].masks  # the first expression's target grows to its largest at frame 5, then shrinks
    grow[0] = False
    for t, rows in enumerate((2, 3, 4, 6, 8, 10, 5, 1)):
        grow[0, t, 4 : 4 + rows, 5:20] = True
    with torch.no_grad():
        out = model(batch)
    areas = [batch.videos[0].masks[0], batch.videos[0].masks[1], batch.videos[1].masks[0]]
    expected = [int(a.flatten(1).sum(1).argmax()) for a in areas]
    assert expected[0] == 5 and out.keyframe_idx.tolist() == expected
    assert out.keyframe_idx.tolist() != out.keyframe_scores.argmax(1).tolist()  # not the method's rule here
    for k, pos in zip(out.keyframe_idx.tolist(), out.window_positions.tolist()):
        assert k in pos
    with torch.no_grad():
        method = build_vrshq(cfg)  # train_keyframe_rule None: the method's rule
        method.load_state_dict(model.state_dict())
        assert method.train()(batch).keyframe_idx.tolist() == out.keyframe_scores.argmax(1).tolist()
