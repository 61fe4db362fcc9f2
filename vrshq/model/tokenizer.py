"""Tokenizers for vrshq: the real LLaMA tokenizer from a local folder, or a tiny one built in code.

The official code uses the slow LLaMA tokenizer of transformers 4.31 (`use_fast=False`,
`model_max_length=2048`, right padding, `pad_token = unk_token`; method §1.1). transformers 5 has no
slow LLaMA tokenizer any more (`AutoTokenizer` ignores `use_fast`), so `load_llama_tokenizer` loads the
`tokenizers`-backed `LlamaTokenizer` for the vocabulary, the special tokens and decoding, and attaches a
:class:`SlowLlamaPieceEncoder` that encodes prompt text exactly as 4.31's slow tokenizer does:
SentencePiece on every piece between added tokens, and, when `tokenizer_config.json` says
`legacy: false`, no dummy prefix on the pieces that follow an added token (unset means legacy, as in
4.31). `vrshq.model.prompts.tokenize_prompt` splits prompts on the added tokens itself and hands each
piece to that encoder, so token positions never depend on the tokenizer backend.

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
    "LLAMA_TOKENIZER_FILES",
    "PIECE_ENCODER_ATTR",
    "SlowLlamaPieceEncoder",
    "TINY_EXPRESSION_WORDS",
    "TokenizerNotFoundError",
    "build_tiny_tokenizer",
    "load_llama_tokenizer",
    "load_tokenizer",
    "read_legacy_flag",
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


LLAMA_TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.model", "added_tokens.json", "tokenizer_config.json", "special_tokens_map.json")
"""The files of the released slow LLaMA tokenizer (`save_pretrained` of transformers 4.31); only
`tokenizer.model` is required, the others are read when present."""

PIECE_ENCODER_ATTR = "vrshq_piece_encoder"
"""Attribute of a tokenizer from :func:`load_llama_tokenizer` holding its :class:`SlowLlamaPieceEncoder`."""

_SPIECE_UNDERLINE = "\u2581"


class TokenizerNotFoundError(FileNotFoundError):
    """A user-given tokenizer folder is missing or has no tokenizer files."""


class SlowLlamaPieceEncoder:
    """Ids of one text piece (text between added tokens) as transformers 4.31's slow `LlamaTokenizer`
    gives them, from the folder's `tokenizer.model`.

    4.31 splits a text on added tokens and passes every piece to `_tokenize`. In legacy mode (the
    default when `tokenizer_config.json` has no `legacy`) every piece is SentencePiece-encoded on its
    own, so each gets SentencePiece's dummy prefix. With `legacy: false` the text's `\u2581` characters
    become spaces, a `\u2581` is put at the start of the whole text, and a piece that does not start
    the text and does not start with a space loses the leading `\u2581` of its first token (a token
    that may then not be in the vocabulary, which gives the unknown id, as in 4.31).

    Args:
        model_file: the `tokenizer.model` SentencePiece file.
        legacy: the `legacy` flag of `tokenizer_config.json` (None: unset, i.e. legacy).
    """

    def __init__(self, model_file: str | os.PathLike, *, legacy: bool | None) -> None:
        with open(model_file, "rb") as handle:
            self._proto = handle.read()
        self.legacy = True if legacy is None else bool(legacy)
        self._sp = None

    def __getstate__(self) -> dict:
        return {"_proto": self._proto, "legacy": self.legacy, "_sp": None}

    @property
    def processor(self):
        """The `sentencepiece.SentencePieceProcessor` (loaded on first use)."""
        if self._sp is None:
            import sentencepiece

            processor = sentencepiece.SentencePieceProcessor()
            processor.LoadFromSerializedProto(self._proto)
            self._sp = processor
        return self._sp

    def save(self, folder: str | os.PathLike) -> tuple[str, ...]:
        """Write `tokenizer.model` and this `legacy` flag (into `tokenizer_config.json`) to `folder`,
        beside a `save_pretrained` of the tokenizer, so :func:`load_llama_tokenizer` restores this
        encoder. Returns the names written."""
        import json

        folder = os.fspath(folder)
        with open(os.path.join(folder, "tokenizer.model"), "wb") as handle:
            handle.write(self._proto)
        config_path = os.path.join(folder, "tokenizer_config.json")
        config = {}
        if os.path.isfile(config_path):
            with open(config_path, encoding="utf-8") as handle:
                config = json.load(handle)
        config["legacy"] = self.legacy
        with open(config_path, "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2)
        return ("tokenizer.model", "tokenizer_config.json")

    def encode(self, text: str, *, first: bool) -> list[int]:
        """Ids of `text`, a piece of one `tokenizer(...)` call after the split on added tokens.

        Args:
            text: the piece, already stripped next to `[SEG]`/`[TAK]`.
            first: whether the piece starts the text given to the tokenizer.
        """
        sp = self.processor
        if self.legacy:
            return [int(i) for i in sp.encode(text)]
        text = text.replace(_SPIECE_UNDERLINE, " ")
        tokens = sp.encode(text, out_type=str)
        if not first and not text.startswith(" ") and tokens and tokens[0].startswith(_SPIECE_UNDERLINE):
            tokens = ([tokens[0][1:]] if len(tokens[0]) > 1 else []) + tokens[1:]
        return [int(sp.piece_to_id(t)) for t in tokens]


def read_legacy_flag(folder: str | os.PathLike) -> bool | None:
    """The `legacy` value of `folder/tokenizer_config.json` (None when the file or the key is absent).

    Raises:
        ValueError: the file is not a JSON object, or `legacy` is not a boolean.
    """
    import json

    path = os.path.join(os.fspath(folder), "tokenizer_config.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        try:
            config = json.load(handle)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
    legacy = config.get("legacy")
    if legacy is not None and not isinstance(legacy, bool):
        raise ValueError(f"{path}: 'legacy' must be true, false or absent, got {legacy!r}")
    return legacy


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

    Nothing is downloaded: `path` must be a local folder with `tokenizer.model` (the slow-tokenizer
    files of the release, read with `sentencepiece`) or, without it, `tokenizer.json`. With
    `tokenizer.model` the returned tokenizer carries a :class:`SlowLlamaPieceEncoder` (attribute
    :data:`PIECE_ENCODER_ATTR`) built with the folder's `legacy` flag, which
    `vrshq.model.prompts.tokenize_prompt` uses, so prompt ids equal transformers 4.31's.

    Args:
        path: local folder, e.g. the folder of the released VRS-HQ weights.
        model_max_length: 2048 as in the official code.

    Raises:
        TokenizerNotFoundError: the folder or its tokenizer files are missing.
        ImportError: `tokenizer.model` is there but `sentencepiece` is not installed.
    """
    from transformers import LlamaTokenizer

    folder = os.fspath(path)
    if not os.path.isdir(folder):
        raise TokenizerNotFoundError(
            f"tokenizer folder {folder!r} does not exist; pass the local folder that holds the LLaMA "
            "tokenizer (tokenizer.model or tokenizer.json) of the VRS-HQ / Chat-UniVi-7B weights"
        )
    names = ("tokenizer.model", "tokenizer.json")
    if not any(os.path.isfile(os.path.join(folder, n)) for n in names):
        raise TokenizerNotFoundError(
            f"tokenizer folder {folder!r} has none of {names}; copy the tokenizer files of the VRS-HQ "
            f"release ({', '.join(LLAMA_TOKENIZER_FILES)}) into it"
        )
    model_file = os.path.join(folder, "tokenizer.model")
    legacy = read_legacy_flag(folder)
    encoder = None
    if os.path.isfile(model_file):
        try:
            import sentencepiece  # noqa: F401 - transformers' own message would ask for tiktoken
        except ImportError as exc:
            raise ImportError(
                f"{model_file} is a SentencePiece model and reading it needs the 'sentencepiece' package: "
                "pip install sentencepiece"
            ) from exc
        encoder = SlowLlamaPieceEncoder(model_file, legacy=legacy)
    tokenizer = LlamaTokenizer.from_pretrained(
        folder,
        local_files_only=True,
        legacy=True if legacy is None else legacy,
        model_max_length=model_max_length,
        padding_side="right",
    )
    tokenizer.pad_token = tokenizer.unk_token
    if encoder is not None:
        setattr(tokenizer, PIECE_ENCODER_ATTR, encoder)
    return tokenizer


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
