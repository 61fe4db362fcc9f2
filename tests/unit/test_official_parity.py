"""Numerical parity with the official VRS-HQ code, stage by stage, in float32 on the CPU.

The fixture (``tests/fixtures/official_parity``) was written by ``scripts/parity/official_fixture.py`` running
the official repository's own code in its pinned environment: a tiny seeded model (state dict with the
official key names), the slow LLaMA tokenizer files, the CLIP anchor's tokenizer files, three 12-frame videos (one
per branch of the official propagation: keyframe inside the video, first, last), their expressions and the
official intermediate results. Here the same state dict goes through our official loader
into our model at the same tiny configuration, and every stage is compared with what the official code computed:

* identical prompt token ids, anchor frame, sampled frames, [SEG]/[TAK] positions and keyframe;
* hidden states, LM-head logits, projected embeddings, TDA weights and TAK', TKS scores, keyframe mask logits
  and the propagated mask logits within 1e-4 relative (max |ours - official| <= 1e-4 * max |official|);
* per-frame IoU of the final masks >= 0.999.

docs/official-parity.md says how the fixture was made and what the official code does that ours does not.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vrshq.builders import build_vrshq
from vrshq.config import LlmConfig, MethodConfig, TrainableConfig, VrshqConfig
from vrshq.checkpoint.official_names import load_official_checkpoint
from vrshq.model.prompts import EncodedPrompt, inference_prompt, normalize_expression, tokenize_prompt
from vrshq.model.tokens import IGNORE_INDEX
from vrshq.sam2_config import sam2_tiny
from vrshq.vision_config import AnchorConfig, ClipImageConfig, TokenMergeConfig, VisionTowerConfig

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official_parity"
REL = 1e-4
MIN_IOU = 0.999

pytestmark = pytest.mark.slow


def parity_config(meta: dict) -> VrshqConfig:
    """Our config at the sizes the fixture's official model was built with (``meta.json``)."""
    llm, tower, anchor, sam2 = meta["llm"], meta["vision_tower"], meta["anchor"], meta["sam2"]
    text, vision = anchor["text"], anchor["vision"]
    return VrshqConfig(
        vision=VisionTowerConfig(
            hidden_size=tower["hidden_size"], intermediate_size=tower["intermediate_size"],
            num_hidden_layers=tower["num_hidden_layers"], num_attention_heads=tower["num_attention_heads"],
            patch_size=tower["patch_size"], image_size=tower["image_size"], hidden_act=tower["hidden_act"],
            select_layer=tower["select_layer"], projector_out_dim=llm["hidden_size"],
            image=ClipImageConfig(shortest_edge=tower["shortest_edge"], crop_size=tower["crop_size"]),
            merge=TokenMergeConfig(cluster_counts=tuple(tower["cluster_counts"]), knn_k=tuple(tower["knn_k"])),
        ),
        anchor=AnchorConfig(
            text_vocab_size=text["vocab_size"], text_hidden_size=text["hidden_size"],
            text_intermediate_size=text["intermediate_size"], text_num_hidden_layers=text["num_hidden_layers"],
            text_num_attention_heads=text["num_attention_heads"],
            text_max_position_embeddings=text["max_position_embeddings"],
            text_bos_token_id=text["bos_token_id"], text_eos_token_id=text["eos_token_id"],
            text_pad_token_id=text["pad_token_id"],
            vision_hidden_size=vision["hidden_size"], vision_intermediate_size=vision["intermediate_size"],
            vision_num_hidden_layers=vision["num_hidden_layers"],
            vision_num_attention_heads=vision["num_attention_heads"], vision_patch_size=vision["patch_size"],
            vision_image_size=vision["image_size"], projection_dim=anchor["projection_dim"],
            tokenizer_path=str(FIXTURE / "clip_tokenizer"), max_frames=meta["method"]["max_frames"],
            image=ClipImageConfig(shortest_edge=anchor["shortest_edge"], crop_size=anchor["crop_size"]),
        ),
        llm=LlmConfig(
            vocab_size=llm["vocab_size"], hidden_size=llm["hidden_size"], intermediate_size=llm["intermediate_size"],
            num_hidden_layers=llm["num_hidden_layers"], num_attention_heads=llm["num_attention_heads"],
            num_key_value_heads=llm["num_key_value_heads"], max_position_embeddings=llm["max_position_embeddings"],
            rms_norm_eps=llm["rms_norm_eps"], tokenizer="llama", tokenizer_path=str(FIXTURE / "tokenizer"),
        ),
        sam2=sam2_tiny(sam2["image_size"], d_model=sam2["d_model"], embed_dim=sam2["embed_dim"],
                       mem_dim=sam2["mem_dim"]),
        method=MethodConfig(tda_alpha=meta["method"]["tda_alpha"], max_frames=meta["method"]["max_frames"],
                            seg_embed_dim=meta["method"]["seg_embed_dim"]),
        trainable=TrainableConfig(mode="none"),
        autocast_dtype="float32",
        name="official-parity",
    )


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, what: str, rel: float = REL) -> None:
    """max |actual - expected| <= rel * max |expected| (elementwise rtol breaks down at values near 0)."""
    actual, expected = actual.detach().float().cpu(), expected.detach().float().cpu()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= rel * scale, f"{what}: max abs error {err:.3g} > {rel:g} x max |official| {scale:.3g}"


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.fixture(scope="module")
def official() -> dict:
    if not (FIXTURE / "official_outputs.pt").is_file():
        pytest.fail(f"{FIXTURE}: fixture missing; regenerate it with scripts/parity/official_fixture.py")
    meta = json.loads((FIXTURE / "meta.json").read_text())
    outputs = torch.load(FIXTURE / "official_outputs.pt", weights_only=True)
    return {"meta": meta, **outputs}


@pytest.fixture(scope="module")
def model(official):
    torch.manual_seed(0)
    net = build_vrshq(parity_config(official["meta"]))
    report = load_official_checkpoint(net, str(FIXTURE / "pytorch_model.bin"))
    assert not report.missing and not report.unexpected and not report.mismatched
    return net.float().eval()


def _texts(video: dict) -> list[str]:
    return [normalize_expression(e) for e in video["expressions"]]


def _expressions(official):
    """(label, video, reference results of one expression) over every video and expression of the fixture."""
    for video in official["videos"]:
        for e, ref in enumerate(video["results"]):
            yield f"{video['name']!r}, expression {e}", video, ref


@pytest.fixture(scope="module")
def segmented(model, official):
    """`segment_video` of every fixture video, each with all its expressions at once."""
    return [model.segment_video(v["frames"], v["expressions"]) for v in official["videos"]]


@pytest.fixture(scope="module")
def segmented_from_official_ids(model, official):
    """`segment_video` with the official prompt ids in place of our tokenizer's (every other stage is ours)."""
    ids = {inference_prompt(t, len(r["frame_ids"])): tuple(r["input_ids"].tolist())
           for v in official["videos"] for t, r in zip(_texts(v), v["results"])}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model, "encode_prompt",
                      lambda prompt: EncodedPrompt(ids[prompt], (IGNORE_INDEX,) * len(ids[prompt])))
        return [model.segment_video(v["frames"], v["expressions"]) for v in official["videos"]]


def _xfail_if_leading_space_is_dropped(model) -> None:
    """The slow LLaMA tokenizer SentencePiece-encodes every text piece with a dummy prefix, also a piece that
    starts with a space (the question's " \nWhat ..." after the last `<image>`): "▁▁\n...". A tokenizer read
    through the `tokenizers` Metaspace pre-tokenizer prepends no "▁" to a piece that starts with a space, so
    the prompt is one token shorter there. Probed on that exact piece."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(FIXTURE / "tokenizer" / "tokenizer.model"))
    if tokenize_prompt(model.tokenizer, " \nx")[1:] != sp.encode(" \nx"):
        pytest.xfail("our LLaMA tokenizer drops SentencePiece's dummy prefix before a leading space")


def test_token_ids_match(model, official):
    _xfail_if_leading_space_is_dropped(model)
    meta = official["meta"]["llm"]
    assert model.mllm.token_ids.seg_token_id == meta["seg_token_id"]
    assert model.mllm.token_ids.tak_token_id == meta["tak_token_id"]
    for video in official["videos"]:
        for text, ref in zip(_texts(video), video["results"]):
            ours = model.encode_prompt(inference_prompt(text, len(ref["frame_ids"]))).input_ids
            assert list(ours) == ref["input_ids"].tolist(), text


def test_anchor_and_sampled_frames_match(model, official):
    for video in official["videos"]:
        selection = model.anchor(video["frames"], _texts(video))
        for e, ref in enumerate(video["results"]):
            assert selection.anchors[e] == ref["anchor_index"], video["name"]
            assert selection.frame_indices[e] == ref["frame_ids"], video["name"]
            probs = ref["anchor_logits_per_image"].softmax(dim=0)
            assert_rel_close(selection.probs[e], probs, f"anchor probabilities of {video['name']!r}, {e}")


def test_hidden_states_logits_and_tda_match(model, official):
    with torch.no_grad():
        for e, video, ref in _expressions(official):
            frames = video["frames"]
            frame_ids = ref["frame_ids"]
            visual = model.encode_visual(frames[frame_ids])
            # the official ids (compared on their own in test_token_ids_match), so this stage stands alone
            inputs = model.mllm.build_inputs([ref["input_ids"].tolist()], [visual])
            assert inputs.inputs_embeds.shape[1] == ref["sequence_length"]
            assert inputs.seg_cols.tolist() == ref["seg_positions"].tolist()
            assert inputs.tak_positions.tolist() == ref["tak_position"].tolist()
            out = model.mllm(inputs)
            assert_rel_close(out.seg_hidden_flat, ref["seg_hidden"], f"[SEG] hidden states of {e}")
            assert_rel_close(out.tak_hidden, ref["tak_hidden"], f"[TAK] hidden state of {e}")
            assert_rel_close(out.hidden_states[0, -1], ref["last_hidden"], f"last hidden state of {e}")
            lm_head = model.mllm.llm.lm_head
            assert_rel_close(lm_head(out.seg_hidden_flat), ref["seg_logits"], f"[SEG] logits of {e}")
            assert_rel_close(lm_head(out.tak_hidden), ref["tak_logits"], f"[TAK] logits of {e}")
            seg = model.seg_head(out.seg_hidden_flat)
            tak = model.seg_head(out.tak_hidden)
            assert_rel_close(seg, ref["seg_embeddings"], f"[SEG] embeddings of {e}")
            assert_rel_close(tak[0], ref["tak_embedding"], f"[TAK] embedding of {e}")
            _, _, tda = model._tda([seg], tak)
            assert_rel_close(tda.similarity[0], ref["tda_cosine"], f"TDA cosines of {e}")
            assert_rel_close(tda.weights[0], ref["tda_weights"], f"TDA weights of {e}")
            assert_rel_close(tda.fused_tak[0], ref["fused_tak"], f"TAK' of {e}")


def test_keyframe_selection_and_keyframe_mask_match(model, official):
    with torch.no_grad():
        for e, video, ref in _expressions(official):
            features = model.sam2.encode_frames(video["frames"])
            frame_ids = torch.tensor(ref["frame_ids"])
            prompts = ref["fused_tak"][None].expand(len(frame_ids), -1).contiguous()
            decode = model.sam2.decode_prompts(features, frame_ids, prompts)
            assert_rel_close(decode.object_score_logits, ref["object_score_logits"], f"object scores of {e}")
            key = ref["frame_ids"].index(ref["keyframe"])
            assert_rel_close(decode.high_res_logits[key, 0], ref["keyframe_mask_logits"],
                             f"keyframe mask logits of {e}")


def _check_segmentation(results, official) -> None:
    refs = [ref for video in official["videos"] for ref in video["results"]]
    results = [result for per_video in results for result in per_video]
    assert len(results) == len(refs)
    for e, (result, ref) in enumerate(zip(results, refs)):
        assert result.frame_indices == ref["frame_ids"]
        assert result.keyframe_idx == ref["keyframe"]
        assert_rel_close(torch.as_tensor(result.keyframe_scores), ref["tks_scores"], f"TKS scores of {e}")
        ours = np.asarray(result.masks)
        theirs = (ref["mask_logits"] > 0).numpy()
        assert ours.shape == theirs.shape
        ious = [iou(ours[t], theirs[t]) for t in range(theirs.shape[0])]
        assert min(ious) >= MIN_IOU, f"expression {e}: per-frame IoU {np.round(ious, 4).tolist()}"


def test_pipeline_from_the_official_prompt_ids_matches(segmented_from_official_ids, official):
    _check_segmentation(segmented_from_official_ids, official)


def test_end_to_end_keyframe_scores_and_masks_match(model, segmented, official):
    _xfail_if_leading_space_is_dropped(model)
    _check_segmentation(segmented, official)
