"""The VRS-HQ special tokens and the sentinel ids of the LLaVA/Chat-UniVi prompt format.

`add_vrshq_tokens` is the only code in vrshq that adds `[SEG]`/`[TAK]` to a tokenizer (method §1.1;
the official merge script added them differently, §9.11). Callers resize the LLM embeddings afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_PLACEHOLDER",
    "IMAGE_TOKEN_INDEX",
    "SEG_TOKEN",
    "TAK_TOKEN",
    "VrshqTokenIds",
    "add_vrshq_tokens",
    "vrshq_token_ids",
]

SEG_TOKEN = "[SEG]"
"""Per-frame segmentation token (method §1.1), literal square brackets."""
TAK_TOKEN = "[TAK]"
"""Video-level target token (method §1.1)."""
IMAGE_PLACEHOLDER = "<image>"
"""Text placeholder for one frame; never a vocabulary token (method §1.1)."""
IMAGE_TOKEN_INDEX = -200
"""Id that `tokenizer_image_token` puts where `<image>` was (method §1.1)."""
IGNORE_INDEX = -100
"""Label id ignored by the cross-entropy (method §1.3)."""


@dataclass(frozen=True)
class VrshqTokenIds:
    """Vocabulary ids of `[SEG]` and `[TAK]` in one tokenizer.

    Attributes:
        seg_token_id: id of `[SEG]` (32000 for the LLaMA vocabulary, inferred in method §1.1).
        tak_token_id: id of `[TAK]` (32001 for the LLaMA vocabulary).
    """

    seg_token_id: int
    tak_token_id: int

    def __post_init__(self) -> None:
        for name in ("seg_token_id", "tak_token_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"VrshqTokenIds.{name} must be a non-negative int, got {value!r}")
        if self.seg_token_id == self.tak_token_id:
            raise ValueError(f"[SEG] and [TAK] must have distinct ids, both are {self.seg_token_id}")


def _first_id(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} produced no id for {text!r}")
    return int(ids[0])


def vrshq_token_ids(tokenizer) -> VrshqTokenIds:
    """Read the ids of `[SEG]`/`[TAK]` from a tokenizer that already has them.

    The id is the first id of tokenising the string without specials, as the official train/eval code
    does (method §1.1).

    Raises:
        ValueError: if the tokens were not added (they would split into several pieces).
    """
    vocab = tokenizer.get_vocab()
    for token in (SEG_TOKEN, TAK_TOKEN):
        if token not in vocab:
            raise ValueError(
                f"tokenizer {type(tokenizer).__name__} has no {token!r}; call add_vrshq_tokens(tokenizer) first"
            )
    return VrshqTokenIds(seg_token_id=_first_id(tokenizer, SEG_TOKEN), tak_token_id=_first_id(tokenizer, TAK_TOKEN))


def add_vrshq_tokens(tokenizer) -> VrshqTokenIds:
    """Add `[SEG]` and `[TAK]` as special tokens (method §1.1) and return their ids.

    Idempotent: a tokenizer that already has both tokens keeps its ids. The caller must then call
    `llm.resize_token_embeddings(len(tokenizer))`.

    Example:
        >>> from vrshq.model.tokenizer import build_tiny_tokenizer
        >>> tok = build_tiny_tokenizer()
        >>> ids = add_vrshq_tokens(tok)
        >>> tok.convert_ids_to_tokens([ids.seg_token_id, ids.tak_token_id])
        ['[SEG]', '[TAK]']
    """
    tokenizer.add_tokens([SEG_TOKEN, TAK_TOKEN], special_tokens=True)
    return vrshq_token_ids(tokenizer)
