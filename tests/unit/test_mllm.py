"""`VrshqMLLM`: visual-token splicing, padding, [SEG]/[TAK] state positions, CE (method §1.3, §2, §6)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.per_prompt_reference import per_token_splice
from vrshq.model.losses import token_ce_loss
from vrshq.model.mllm import VrshqMLLM, build_llama
from vrshq.model.prompts import encode_prompt, inference_prompt
from vrshq.model.seg_head import SegHead
from vrshq.model.tokenizer import build_tiny_tokenizer
from vrshq.model.tokens import IGNORE_INDEX, add_vrshq_tokens

K = 3  # visual tokens per frame in these tests
H = 32


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    tok = build_tiny_tokenizer()
    ids = add_vrshq_tokens(tok)
    llm = build_llama(
        vocab_size=len(tok), hidden_size=H, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5, rope_theta=10000.0,
    ).eval()
    return tok, VrshqMLLM(llm, token_ids=ids, tokens_per_frame=K)


def _encoded(tok, n):
    return encode_prompt(tok, inference_prompt("the red ball", n))


def test_build_inputs_splices_visual_tokens_and_positions(setup):
    tok, mllm = setup
    e2, e1 = _encoded(tok, 2), _encoded(tok, 1)
    vis2, vis1 = torch.randn(2, K, H), torch.randn(1, K, H)
    inputs = mllm.build_inputs([e2.input_ids, e1.input_ids], [vis2, vis1], [e2.labels, e1.labels])
    len2, len1 = len(e2.input_ids) + 2 * (K - 1), len(e1.input_ids) + (K - 1)
    assert inputs.inputs_embeds.shape == (2, len2, H)
    assert inputs.attention_mask.sum(1).tolist() == [len2, len1]
    # prompt with 2 frames: placeholders at 38 and 43 (test_prompts), [SEG] at 83/88, [TAK] at 97
    torch.testing.assert_close(inputs.inputs_embeds[0, 38 : 38 + K], vis2[0])
    torch.testing.assert_close(inputs.inputs_embeds[0, 43 + (K - 1) : 43 + (K - 1) + K], vis2[1])
    # the state *before* each token (method §2)
    assert inputs.seg_positions[0].tolist() == [83 + 2 * (K - 1) - 1, 88 + 2 * (K - 1) - 1]
    assert inputs.tak_positions[0].item() == 97 + 2 * (K - 1) - 1
    seg_id = tok.convert_tokens_to_ids("[SEG]")
    text_embed = mllm.llm.get_input_embeddings().weight
    torch.testing.assert_close(inputs.inputs_embeds[0, inputs.seg_positions[0] + 1], text_embed[[seg_id, seg_id]])
    # labels: visual tokens and padding ignored, answer supervised
    labels = inputs.labels
    assert (labels[0, 38 : 38 + K] == IGNORE_INDEX).all()
    assert (labels[1, len1:] == IGNORE_INDEX).all()
    assert labels[0, inputs.seg_positions[0] + 1].tolist() == [seg_id, seg_id]


def test_build_inputs_matches_a_per_token_splice(setup):
    """Prompts of 1-3 frames, two of them sharing one visual-token tensor (as the expressions of a clip do):
    embeddings, mask, labels and positions equal the plain splice (``benchmarks.per_prompt_reference``), and the
    shared tensor's gradient is the sum over the prompts that use it."""
    tok, mllm = setup
    torch.manual_seed(1)
    frames = [3, 1, 3, 2]
    encoded = [_encoded(tok, n) for n in frames]
    shared = torch.randn(3, K, H, requires_grad=True)
    visual = [shared, torch.randn(1, K, H), shared, torch.randn(2, K, H)]
    inputs = mllm.build_inputs([e.input_ids for e in encoded], visual, [e.labels for e in encoded])
    reference = per_token_splice(mllm, [e.input_ids for e in encoded], visual, [e.labels for e in encoded])
    assert inputs.inputs_embeds.shape == reference.inputs_embeds.shape
    torch.testing.assert_close(inputs.inputs_embeds, reference.inputs_embeds, rtol=0, atol=0)
    for name in ("attention_mask", "labels", "seg_rows", "seg_cols", "tak_positions"):
        assert getattr(inputs, name).tolist() == getattr(reference, name).tolist(), name
    assert inputs.seg_counts == reference.seg_counts == tuple(frames)
    inputs.inputs_embeds.sum().backward()
    torch.testing.assert_close(shared.grad, torch.full_like(shared, 2.0))


def test_hidden_states_are_post_norm_last_layer_and_padding_invariant(setup):
    tok, mllm = setup
    e2, e1 = _encoded(tok, 2), _encoded(tok, 1)
    vis2, vis1 = torch.randn(2, K, H), torch.randn(1, K, H)
    with torch.no_grad():
        inputs = mllm.build_inputs([e2.input_ids, e1.input_ids], [vis2, vis1], [e2.labels, e1.labels])
        out = mllm(inputs)
        full = mllm.llm(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask, use_cache=False)
        # the LM head of the extracted state is the logit that predicts [SEG] / [TAK]
        torch.testing.assert_close(mllm.llm.lm_head(out.seg_hidden[0]), full.logits[0, inputs.seg_positions[0]])
        torch.testing.assert_close(mllm.llm.lm_head(out.tak_hidden), full.logits[[0, 1], inputs.tak_positions])
        torch.testing.assert_close(out.ce_loss, token_ce_loss(full.logits, inputs.labels))
        alone = mllm(mllm.build_inputs([e1.input_ids], [vis1]))
    torch.testing.assert_close(alone.seg_hidden[0], out.seg_hidden[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone.tak_hidden[0], out.tak_hidden[1], atol=1e-5, rtol=1e-5)
    assert alone.ce_loss is None


def test_seg_count_must_match_frames(setup):
    tok, mllm = setup
    e2 = _encoded(tok, 2)
    with pytest.raises(ValueError, match="every frame needs one of each"):
        mllm.build_inputs([e2.input_ids], [torch.randn(3, K, H)])
    seg_id = tok.convert_tokens_to_ids("[SEG]")
    tak_id = tok.convert_tokens_to_ids("[TAK]")
    extra_seg = [t if t != tak_id else seg_id for t in e2.input_ids]  # replace [TAK] by a third [SEG]
    with pytest.raises(ValueError, match="every frame needs one of each"):
        mllm.build_inputs([extra_seg], [torch.randn(2, K, H)])
    no_tak = [t for t in e2.input_ids if t != tak_id]
    with pytest.raises(ValueError, match="exactly one is required"):
        mllm.build_inputs([no_tak], [torch.randn(2, K, H)])
    with pytest.raises(ValueError, match=r"\(n, 3, 32\)"):
        mllm.build_inputs([e2.input_ids], [torch.randn(2, K + 1, H)])


def test_token_ids_must_fit_embedding(setup):
    tok, mllm = setup
    from vrshq.model.tokens import VrshqTokenIds

    with pytest.raises(ValueError, match="resize the token embeddings"):
        VrshqMLLM(mllm.llm, token_ids=VrshqTokenIds(10_000, 10_001), tokens_per_frame=K)


def test_seg_head_shapes_and_names():
    head = SegHead(8, 4)
    assert [n for n, _ in head.named_parameters()] == ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]
    assert head.mlp[0].out_features == 8  # hidden = in_dim, as officially (4096 -> 4096 -> 256)
    x = torch.randn(5, 8)
    expected = head.mlp[2](torch.relu(head.mlp[0](x)))
    torch.testing.assert_close(head(x), expected)
