"""Prompt text (method §1.2-§1.3) and token ids/labels/positions (method §1.1, §1.3)."""

from __future__ import annotations

import random

import pytest

from vrshq.model.prompts import (
    ANSWER_TEMPLATES,
    LONG_QUESTION_TEMPLATES,
    SHORT_QUESTION_TEMPLATES,
    encode_prompt,
    expand_seg_tokens,
    expand_video_placeholder,
    inference_prompt,
    normalize_expression,
    tokenize_prompt,
    training_prompt,
)
from vrshq.model.tokenizer import build_tiny_tokenizer
from vrshq.model.tokens import IGNORE_INDEX, IMAGE_TOKEN_INDEX, add_vrshq_tokens

SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions."
)


def test_inference_prompt_short_exact_text():
    prompt = inference_prompt("  The  Red\tBall ", 2)
    assert prompt.text == (
        SYSTEM + " USER: Reference Video: (0)<image>, (1)<image> \nWhat is the red ball in the Reference Video? "
        "Please respond with segmentation masks for each frame and for the entire video separately. "
        "ASSISTANT: Sure, the segmentation result of each frame is (0) [SEG], (1) [SEG], while for the entire "
        "video it is [TAK].</s>"
    )
    assert prompt.instruction == prompt.text.split(" Sure,")[0]
    assert prompt.instruction.endswith("separately. ASSISTANT:")
    assert prompt.num_frames == 2


def test_inference_prompt_long_exact_text():
    prompt = inference_prompt("Which BALL moves?", 1)
    assert prompt.text == (
        SYSTEM + " USER: Reference Video: (0)<image> \nwhich ball moves? Please find it in the Reference Video and "
        "respond with segmentation masks for each frame and for the entire video separately. ASSISTANT: Sure, the "
        "segmentation result of each frame is (0) [SEG], while for the entire video it is [TAK].</s>"
    )


def test_expansions():
    assert expand_video_placeholder("V: <video> \nq", 3) == "V: (0)<image>, (1)<image>, (2)<image> \nq"
    assert expand_seg_tokens("is [SEG], it is [TAK].", 3) == "is (0) [SEG], (1) [SEG], (2) [SEG], it is [TAK]."
    with pytest.raises(ValueError, match="exactly one"):
        expand_video_placeholder("no video", 2)
    with pytest.raises(ValueError, match="positive"):
        expand_seg_tokens("[SEG] [TAK]", 0)


def test_normalize_expression():
    assert normalize_expression(" A  Big\n\tDog ") == "a big dog"


def test_training_prompt_templates_and_no_lowercasing():
    seen_answers, seen_short = set(), set()
    for seed in range(60):
        prompt = training_prompt("  The Red  Ball ", 3, rng=random.Random(seed))
        assert "The Red  Ball" in prompt.text  # only stripped, not normalised (method §1.3, §9.12)
        question = prompt.text.split(" USER: ")[1].split(" ASSISTANT: ")[0]
        answer = prompt.text.split(" ASSISTANT: ")[1]
        matched_q = [
            i for i, t in enumerate(SHORT_QUESTION_TEMPLATES)
            if expand_video_placeholder(t.format(sent="The Red  Ball"), 3) == question
        ]
        matched_a = [i for i, a in enumerate(ANSWER_TEMPLATES) if expand_seg_tokens(a, 3) + "</s>" == answer]
        assert len(matched_q) == 1 and len(matched_a) == 1
        seen_short.add(matched_q[0])
        seen_answers.add(matched_a[0])
    assert seen_short == {0, 1, 2} and seen_answers == {0, 1, 2, 3}
    long_prompt = training_prompt("what can be used to cut?", 2, rng=random.Random(0))
    assert any(
        expand_video_placeholder(t.format(sent="what can be used to cut?"), 2) in long_prompt.text
        for t in LONG_QUESTION_TEMPLATES
    )


class _CharTokenizer:
    """SentencePiece-like stand-in: every encode gets a dummy prefix '▁', spaces become '▁'."""

    bos_token, eos_token = "<s>", "</s>"

    def __init__(self) -> None:
        self._vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "[SEG]": 3, "[TAK]": 4, "▁": 5}

    @property
    def bos_token_id(self) -> int:
        return 1

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)

    def convert_tokens_to_ids(self, token: str) -> int:
        return self._vocab[token]

    def _id(self, ch: str) -> int:
        return self._vocab.setdefault(ch, len(self._vocab))

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        assert not add_special_tokens
        return [self._id(c) for c in "▁" + text.replace(" ", "▁")]

    def pieces(self, ids: list[int]) -> list[str]:
        inverse = {v: k for k, v in self._vocab.items()}
        return [inverse.get(i, "<image>") for i in ids]


def test_tokenize_prompt_follows_slow_tokenizer_chunking():
    tok = _CharTokenizer()
    ids = tokenize_prompt(tok, "ab (0)<image>, (1) [SEG], c [TAK].</s>")
    assert tok.pieces(ids) == [
        "<s>",
        "▁", "a", "b", "▁", "(", "0", ")",  # chunk before <image>, with its own dummy prefix
        "<image>",
        "▁", ",", "▁", "(", "1", ")",  # the space before [SEG] is stripped
        "[SEG]",
        "▁", ",", "▁", "c",  # the space after [SEG] is stripped, the piece gets a dummy prefix
        "[TAK]",
        "▁", ".",
        "</s>",  # the tokenizer's own special token, no stripping needed
    ]
    assert ids[8] == IMAGE_TOKEN_INDEX


@pytest.fixture(scope="module")
def tiny_tok():
    tok = build_tiny_tokenizer()
    add_vrshq_tokens(tok)
    return tok


def test_encode_prompt_positions_and_labels(tiny_tok):
    prompt = inference_prompt("the red ball", 2)
    enc = encode_prompt(tiny_tok, prompt)
    ids, labels = list(enc.input_ids), list(enc.labels)
    pieces = tiny_tok.convert_ids_to_tokens([max(i, 0) for i in ids])
    # hand-counted on the tiny word-level tokenizer: BOS + 29 system tokens + "USER :" + ...
    assert len(ids) == 100
    assert ids[0] == tiny_tok.bos_token_id
    assert [i for i, t in enumerate(ids) if t == IMAGE_TOKEN_INDEX] == [38, 43]
    assert pieces[35:38] == ["(", "0", ")"] and pieces[39:43] == [",", "(", "1", ")"]
    assert pieces[69:71] == ["ASSISTANT", ":"]
    seg_id, tak_id = tiny_tok.convert_tokens_to_ids(["[SEG]", "[TAK]"])
    assert [i for i, t in enumerate(ids) if t == seg_id] == [83, 88]
    assert [i for i, t in enumerate(ids) if t == tak_id] == [97]
    assert pieces[96:100] == ["is", "[TAK]", ".", "</s>"]
    # everything through "ASSISTANT:" is masked; the answer (incl. [SEG], [TAK], </s>) is supervised
    assert labels[:71] == [IGNORE_INDEX] * 71
    assert labels[71:] == ids[71:]
    assert pieces[71] == "Sure"


def test_encode_prompt_single_frame_and_many_frames(tiny_tok):
    for n in (1, 12):
        enc = encode_prompt(tiny_tok, inference_prompt("a dog", n))
        seg_id = tiny_tok.convert_tokens_to_ids("[SEG]")
        assert enc.input_ids.count(IMAGE_TOKEN_INDEX) == n
        assert enc.input_ids.count(seg_id) == n
        assert all(enc.labels[i] == IGNORE_INDEX for i, t in enumerate(enc.input_ids) if t == IMAGE_TOKEN_INDEX)


def test_tokenize_prompt_requires_vrshq_tokens():
    with pytest.raises(ValueError, match="add_vrshq_tokens"):
        tokenize_prompt(build_tiny_tokenizer(), "x")
