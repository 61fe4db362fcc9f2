"""VRS-HQ prompt text and its tokenisation (method §1.1-§1.3).

The prompt is the llava_v1 conversation `"{system} USER: {question} ASSISTANT: {answer}</s>"`. The
question holds `<video>`, expanded to `(0)<image>, (1)<image>, …`; the answer holds one `(i) [SEG]` per
frame and one `[TAK]`. `<image>` becomes the placeholder id -200 (`tokenizer_image_token`), and labels
mask everything up to and including `ASSISTANT:` (the LLaVA-v1 "-2" convention of method §1.3).

Inference always uses template S0/L0 with answer A0 and a lower-cased, whitespace-collapsed
expression; training draws a random template and answer and only strips the expression.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from vrshq.model.tokenizer import PIECE_ENCODER_ATTR
from vrshq.model.tokens import (
    IGNORE_INDEX,
    IMAGE_PLACEHOLDER,
    IMAGE_TOKEN_INDEX,
    SEG_TOKEN,
    TAK_TOKEN,
)

__all__ = [
    "ANSWER_TEMPLATES",
    "EncodedPrompt",
    "LONG_QUESTION_TEMPLATES",
    "SHORT_QUESTION_TEMPLATES",
    "SYSTEM_PROMPT",
    "VIDEO_PLACEHOLDER",
    "VideoPrompt",
    "build_conversation",
    "build_video_prompt",
    "encode_prompt",
    "expand_seg_tokens",
    "expand_video_placeholder",
    "inference_prompt",
    "normalize_expression",
    "tokenize_prompt",
    "training_image_prompt",
    "training_prompt",
]

VIDEO_PLACEHOLDER = "<video>"
"""Plain text expanded into one `(i)<image>` per frame before tokenisation (method §1.3)."""

SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
"""llava_v1 system text (method §1.2)."""

_ROLES = ("USER", "ASSISTANT")  # llava_v1 roles (method §1.2)
_SEP = " "  # llava_v1 sep between system/user turn (method §1.2)
_SEP2 = "</s>"  # llava_v1 sep2 after the assistant turn (method §1.2)

_VIDEO_PREFIX = "Reference Video: " + VIDEO_PLACEHOLDER + " \n"
SHORT_QUESTION_TEMPLATES: tuple[str, ...] = (
    # S0-S2 (method §1.3): expressions that do not end with "?".
    _VIDEO_PREFIX + "What is {sent} in the Reference Video? Please respond with segmentation masks for each "
    "frame and for the entire video separately.",
    _VIDEO_PREFIX + "What is {sent} in the Reference Video? Please output segmentation masks for each frame "
    "and for the entire video separately.",
    _VIDEO_PREFIX + "Please find {sent} in the Reference Video and segment it in each frame and in the entire "
    "video respectively.",
)
LONG_QUESTION_TEMPLATES: tuple[str, ...] = (
    # L0-L1 (method §1.3): expressions that end with "?".
    _VIDEO_PREFIX + "{sent} Please find it in the Reference Video and respond with segmentation masks for each "
    "frame and for the entire video separately.",
    _VIDEO_PREFIX + "{sent} Please find it in the Reference Video and output segmentation masks in frame-level "
    "and video-level separately.",
)
ANSWER_TEMPLATES: tuple[str, ...] = (
    # A0-A3 (method §1.3, ANSWER_LIST).
    "Sure, the segmentation result of each frame is [SEG], while for the entire video it is [TAK].",
    "Sure, in the frame-level it is [SEG], and in the video-level it is [TAK].",
    "The results for each frame is [SEG], while the segmentation result for the entire video is [TAK].",
    "Sure, the segmentation result for individual frame is [SEG], and for the complete video, it's [TAK].",
)


@dataclass(frozen=True)
class VideoPrompt:
    """A full conversation and the part of it whose tokens are masked in the labels.

    Attributes:
        text: `"{system} USER: {question} ASSISTANT: {answer}</s>"`.
        instruction: `"{system} USER: {question} ASSISTANT:"`; its tokens get label -100.
        num_frames: number of `<image>` placeholders and of `[SEG]` tokens.
    """

    text: str
    instruction: str
    num_frames: int


@dataclass(frozen=True)
class EncodedPrompt:
    """Token ids of one prompt, with -200 per frame (not yet expanded to visual tokens).

    Attributes:
        input_ids: BOS first, `IMAGE_TOKEN_INDEX` where each `<image>` was.
        labels: same length; `IGNORE_INDEX` up to and including `ASSISTANT:`, ids after it.
    """

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]


def normalize_expression(expression: str) -> str:
    """Lower-case and collapse whitespace, as the evaluation set does (method §1.3).

    >>> normalize_expression("  The  Red\\tBall ")
    'the red ball'
    """
    return " ".join(expression.lower().split())


def expand_video_placeholder(question: str, num_frames: int) -> str:
    """Replace the single `<video>` by `(0)<image>, (1)<image>, …` (`convert2imagesplit`, method §1.3)."""
    _check_frames(num_frames)
    if question.count(VIDEO_PLACEHOLDER) != 1:
        raise ValueError(f"question must hold exactly one {VIDEO_PLACEHOLDER!r}, got {question!r}")
    items = ", ".join(f"({i}){IMAGE_PLACEHOLDER}" for i in range(num_frames))
    return question.replace(VIDEO_PLACEHOLDER, items)


def expand_seg_tokens(answer: str, num_frames: int) -> str:
    """Replace the single `[SEG]` by `(0) [SEG], (1) [SEG], …` (method §1.3)."""
    _check_frames(num_frames)
    if answer.count(SEG_TOKEN) != 1 or answer.count(TAK_TOKEN) != 1:
        raise ValueError(f"answer must hold one {SEG_TOKEN} and one {TAK_TOKEN}, got {answer!r}")
    return answer.replace(SEG_TOKEN, ", ".join(f"({i}) {SEG_TOKEN}" for i in range(num_frames)))


def build_conversation(question: str, answer: str) -> tuple[str, str]:
    """llava_v1 conversation text (method §1.2); returns `(full_text, instruction_text)`."""
    instruction = f"{SYSTEM_PROMPT}{_SEP}{_ROLES[0]}: {question}{_SEP}{_ROLES[1]}:"
    return f"{instruction} {answer}{_SEP2}", instruction


def build_video_prompt(
    expression: str, num_frames: int, *, question_template: str, answer_template: str
) -> VideoPrompt:
    """Fill a question and answer template for `num_frames` frames (no normalisation of `expression`)."""
    question = expand_video_placeholder(question_template.format(sent=expression), num_frames)
    answer = expand_seg_tokens(answer_template, num_frames)
    text, instruction = build_conversation(question, answer)
    return VideoPrompt(text=text, instruction=instruction, num_frames=num_frames)


def _is_long(expression: str) -> bool:
    return expression.endswith("?")


def inference_prompt(expression: str, num_frames: int) -> VideoPrompt:
    """The evaluation prompt: normalised expression, S0 (or L0 when it ends with `?`) and A0 (method §1.3)."""
    sent = normalize_expression(expression)
    template = LONG_QUESTION_TEMPLATES[0] if _is_long(sent) else SHORT_QUESTION_TEMPLATES[0]
    return build_video_prompt(sent, num_frames, question_template=template, answer_template=ANSWER_TEMPLATES[0])


def training_prompt(expression: str, num_frames: int, *, rng: random.Random) -> VideoPrompt:
    """A training prompt: stripped expression, random S/L template by the trailing `?`, random A0-A3."""
    sent = expression.strip()
    templates = LONG_QUESTION_TEMPLATES if _is_long(sent) else SHORT_QUESTION_TEMPLATES
    return build_video_prompt(
        sent, num_frames, question_template=rng.choice(templates), answer_template=rng.choice(ANSWER_TEMPLATES)
    )


def training_image_prompt(expression: str, *, rng: random.Random) -> VideoPrompt:
    """A training prompt of an image sample (method §1.3): the video templates with a 1-frame video
    (`(0)<image>`) and an answer with a single bare `[SEG]` (not `(0) [SEG]`), as the official image
    datasets build it."""
    sent = expression.strip()
    templates = LONG_QUESTION_TEMPLATES if _is_long(sent) else SHORT_QUESTION_TEMPLATES
    question = expand_video_placeholder(rng.choice(templates).format(sent=sent), 1)
    text, instruction = build_conversation(question, rng.choice(ANSWER_TEMPLATES))
    return VideoPrompt(text=text, instruction=instruction, num_frames=1)


def _check_frames(num_frames: int) -> None:
    if not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")


def _encode_text(tokenizer, text: str, *, strip_tokens: Sequence[str], keep_tokens: Sequence[str]) -> list[int]:
    """Encode text without `<image>`, splitting on added tokens like the slow LLaMA tokenizer.

    The slow tokenizer (transformers 4.31, method §1.1) splits text on added tokens, strips the
    whitespace on both sides of tokens added as plain strings (`[SEG]`, `[TAK]`), keeps it around the
    tokenizer's own specials (`</s>`), and encodes every remaining piece on its own (each piece gets
    SentencePiece's dummy prefix). Doing the split here makes positions independent of the backend.
    """
    specials = [*strip_tokens, *keep_tokens]
    pattern = "(" + "|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True)) + ")"
    parts = re.split(pattern, text)
    # A tokenizer read from a SentencePiece file encodes pieces as the slow tokenizer (legacy flag included).
    piece_encoder = getattr(tokenizer, PIECE_ENCODER_ATTR, None)
    ids: list[int] = []
    for i, part in enumerate(parts):
        if part in specials:
            ids.append(int(tokenizer.convert_tokens_to_ids(part)))
            continue
        if i + 1 < len(parts) and parts[i + 1] in strip_tokens:
            part = part.rstrip()
        if i > 0 and parts[i - 1] in strip_tokens:
            part = part.lstrip()
        if part and piece_encoder is not None:
            ids.extend(piece_encoder.encode(part, first=i == 0))
        elif part:
            ids.extend(int(t) for t in tokenizer.encode(part, add_special_tokens=False))
    return ids


def tokenize_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a prompt with `IMAGE_TOKEN_INDEX` per `<image>` and one BOS (`tokenizer_image_token`).

    Args:
        tokenizer: a tokenizer that has `[SEG]`/`[TAK]` (`add_vrshq_tokens`) and a BOS token.
        text: prompt text, `<video>` already expanded.

    Returns:
        `[bos, *chunk0, -200, *chunk1, ...]`.
    """
    if tokenizer.bos_token_id is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no BOS token; the LLaMA prompt starts with one")
    vocab = tokenizer.get_vocab()
    for token in (SEG_TOKEN, TAK_TOKEN):
        if token not in vocab:
            raise ValueError(f"tokenizer lacks {token!r}; call vrshq.model.tokens.add_vrshq_tokens(tokenizer) first")
    keep = [t for t in (tokenizer.eos_token, tokenizer.bos_token, getattr(tokenizer, "unk_token", None)) if t]
    ids = [int(tokenizer.bos_token_id)]
    for i, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if i > 0:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(_encode_text(tokenizer, chunk, strip_tokens=(SEG_TOKEN, TAK_TOKEN), keep_tokens=keep))
    return ids


def encode_prompt(tokenizer, prompt: VideoPrompt) -> EncodedPrompt:
    """Token ids and labels of a prompt (method §1.3).

    Labels are -100 for every token of `prompt.instruction` (BOS through `ASSISTANT:`) and for image
    placeholders; the answer tokens, including `[SEG]`, `[TAK]` and `</s>`, are supervised.

    Raises:
        ValueError: if the instruction's tokens are not a prefix of the full prompt's tokens (a tokenizer
            that merges across the `ASSISTANT:` boundary cannot be used with this label convention).
    """
    input_ids = tokenize_prompt(tokenizer, prompt.text)
    instruction_ids = tokenize_prompt(tokenizer, prompt.instruction)
    n = len(instruction_ids)
    if input_ids[:n] != instruction_ids:
        raise ValueError(
            "the tokens of the instruction are not a prefix of the prompt's tokens; cannot place the label mask "
            f"(tokenizer {type(tokenizer).__name__})"
        )
    labels = [IGNORE_INDEX] * n + [IGNORE_INDEX if t == IMAGE_TOKEN_INDEX else t for t in input_ids[n:]]
    return EncodedPrompt(input_ids=tuple(input_ids), labels=tuple(labels))
