"""Tokenizers for vrshq: the real LLaMA tokenizer from a local folder, or a tiny one built in code.

The official code uses the slow LLaMA tokenizer (`use_fast=False`, `model_max_length=2048`, right
padding, `pad_token = unk_token`; method §1.1). transformers 5 has no slow LLaMA tokenizer any more
(`AutoTokenizer` ignores `use_fast`), so `load_llama_tokenizer` loads the `tokenizers`-backed
`LlamaTokenizer` in legacy mode. The slow tokenizer's one behaviour that changes token positions,
stripping the spaces around added special tokens and encoding every text chunk on its own, is
reproduced by `vrshq.model.prompts.tokenize_prompt`, which never hands a whole prompt to the tokenizer.

The tiny tokenizer is a WordPiece model over the prompt-template words, a small synthetic expression
vocabulary and single characters (so any text tokenises), wrapped as a `PreTrainedTokenizerFast`.
It is deterministic and is saved next to a checkpoint with `save_pretrained`.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Iterable

__all__ = [
    "LLAMA_MODEL_MAX_LENGTH",
    "TINY_EXPRESSION_WORDS",
    "TokenizerNotFoundError",
    "build_tiny_tokenizer",
    "load_llama_tokenizer",
    "load_tokenizer",
]

LLAMA_MODEL_MAX_LENGTH = 2048
"""`model_max_length` of the official tokenizer (method §1.1)."""

TINY_EXPRESSION_WORDS: tuple[str, ...] = (
    # Words of synthetic expressions (colours, shapes, sizes, places, motions) so they are single tokens.
    "the", "a", "an", "object", "thing", "which", "that", "is", "are", "on", "in", "of", "to", "and",
    "red", "green", "blue", "yellow", "white", "black", "orange", "purple", "pink", "cyan", "magenta", "gray",
    "circle", "square", "triangle", "rectangle", "ellipse", "star", "disk", "box", "shape", "ball",
    "small", "large", "big", "tiny", "left", "right", "top", "bottom", "middle", "center",
    "moving", "moves", "static", "still", "fast", "slow", "up", "down", "bouncing", "first", "last",
    "person", "dog", "cat", "car", "bird", "horse", "man", "woman", "who", "what", "where", "can",
    "be", "used", "for", "with", "it", "this", "there", "most", "more", "less", "than", "other",
)
_SPECIALS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}


class TokenizerNotFoundError(FileNotFoundError):
    """A user-given tokenizer folder is missing or has no tokenizer files."""


def _template_words() -> list[str]:
    # Local import: prompts imports tokens only, so there is no cycle.
    from vrshq.model import prompts

    texts = [prompts.SYSTEM_PROMPT, *prompts.SHORT_QUESTION_TEMPLATES, *prompts.LONG_QUESTION_TEMPLATES]
    texts += [*prompts.ANSWER_TEMPLATES, "USER", "ASSISTANT", "Reference Video"]
    words: list[str] = []
    for text in texts:
        words += re.findall(r"[A-Za-z']+", text)
    return words


def build_tiny_tokenizer(*, extra_words: Iterable[str] = ()):
    """Build the deterministic tiny tokenizer used by the `tiny` preset.

    Every template word and every word of `TINY_EXPRESSION_WORDS`/`extra_words` (and its lower-case form)
    is one token; other words fall back to single characters (WordPiece `##` continuations), so any
    text tokenises; characters outside printable ASCII map to `<unk>`. Specials follow LLaMA:
    `<s>` (BOS, added at the front), `</s>`, `<unk>` (also the padding token), right padding.

    Args:
        extra_words: additional whole-word tokens, e.g. the vocabulary of a synthetic dataset.

    Returns:
        A `transformers.PreTrainedTokenizerFast` without `[SEG]`/`[TAK]` (add them with
        `vrshq.model.tokens.add_vrshq_tokens`).

    Example:
        >>> tok = build_tiny_tokenizer()
        >>> tok.convert_ids_to_tokens(tok("a red circle").input_ids)
        ['<s>', 'a', 'red', 'circle']
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        if token not in vocab:
            vocab[token] = len(vocab)

    for token in (_SPECIALS["unk"], _SPECIALS["bos"], _SPECIALS["eos"], _SPECIALS["pad"]):
        add(token)
    for ch in string.digits + string.ascii_letters + string.punctuation:
        add(ch)
        if ch.isalnum():
            add("##" + ch)
    for word in [*_template_words(), *TINY_EXPRESSION_WORDS, *extra_words]:
        if not isinstance(word, str) or not word or any(c.isspace() for c in word):
            raise ValueError(f"extra_words must be non-empty strings without whitespace, got {word!r}")
        add(word)
        add(word.lower())

    backend = Tokenizer(models.WordPiece(vocab=vocab, unk_token=_SPECIALS["unk"], max_input_chars_per_word=100))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    backend.decoder = decoders.WordPiece(prefix="##")
    bos_id = vocab[_SPECIALS["bos"]]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{_SPECIALS['bos']} $A", pair=f"{_SPECIALS['bos']} $A $B", special_tokens=[(_SPECIALS["bos"], bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=_SPECIALS["bos"],
        eos_token=_SPECIALS["eos"],
        unk_token=_SPECIALS["unk"],
        pad_token=_SPECIALS["unk"],
        model_max_length=LLAMA_MODEL_MAX_LENGTH,
        padding_side="right",
    )
    return tokenizer


def load_llama_tokenizer(path: str | os.PathLike, *, model_max_length: int = LLAMA_MODEL_MAX_LENGTH):
    """Load the LLaMA tokenizer of a local Chat-UniVi/VRS-HQ folder (method §1.1 settings).

    Nothing is downloaded: `path` must be a local folder with `tokenizer.json` or `tokenizer.model`.

    Args:
        path: local folder, e.g. the folder of the released VRS-HQ weights.
        model_max_length: 2048 as in the official code.

    Raises:
        TokenizerNotFoundError: the folder or its tokenizer files are missing.
    """
    from transformers import LlamaTokenizer

    folder = os.fspath(path)
    if not os.path.isdir(folder):
        raise TokenizerNotFoundError(
            f"tokenizer folder {folder!r} does not exist; pass the local folder that holds the LLaMA "
            "tokenizer (tokenizer.model or tokenizer.json) of the VRS-HQ / Chat-UniVi-7B weights"
        )
    names = ("tokenizer.json", "tokenizer.model")
    if not any(os.path.isfile(os.path.join(folder, n)) for n in names):
        raise TokenizerNotFoundError(
            f"tokenizer folder {folder!r} has none of {names}; copy the tokenizer files of the VRS-HQ "
            "(or Chat-UniVi-7B) release into it"
        )
    _warn_if_not_legacy(folder)
    tokenizer = LlamaTokenizer.from_pretrained(
        folder,
        local_files_only=True,
        legacy=True,
        model_max_length=model_max_length,
        padding_side="right",
    )
    tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def _warn_if_not_legacy(folder: str) -> None:
    """`tokenize_prompt` reproduces the slow tokenizer's legacy mode (the transformers 4.31 default)."""
    import json
    import warnings

    config_path = os.path.join(folder, "tokenizer_config.json")
    if not os.path.isfile(config_path):
        return
    with open(config_path, encoding="utf-8") as handle:
        legacy = json.load(handle).get("legacy")
    if legacy is False:
        warnings.warn(
            f"{config_path} sets legacy=false; vrshq.model.prompts.tokenize_prompt reproduces the slow LLaMA "
            "tokenizer's legacy mode (a dummy prefix on every text piece after [SEG]/[TAK]), so token positions "
            "may differ from the official run",
            stacklevel=3,
        )


def load_tokenizer(path: str | os.PathLike):
    """Load a tokenizer saved with `save_pretrained` (the tiny one saved next to a checkpoint).

    Raises:
        TokenizerNotFoundError: `path` is not a folder with `tokenizer.json`.
    """
    from transformers import PreTrainedTokenizerFast

    folder = os.fspath(path)
    if not os.path.isfile(os.path.join(folder, "tokenizer.json")):
        raise TokenizerNotFoundError(f"no tokenizer.json in {folder!r}; save one with tokenizer.save_pretrained()")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    return tokenizer
