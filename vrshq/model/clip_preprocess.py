"""CLIP inputs on the device: image preprocessing as torch ops, and the text tokenizers of the anchor model.

Images. :func:`clip_preprocess` reproduces ``CLIPImageProcessor`` of the openai CLIP checkpoints
(method §1.5: shortest side to ``shortest_edge`` with PIL bicubic, centre crop, rescale 1/255, CLIP
mean/std) on a batch of uint8 frames, on whatever device they are sent to, without PIL or a
per-frame loop. PIL resamples separably (horizontal pass, then vertical) with a Keys a=-0.5 cubic
stretched by the scale factor when shrinking, and rounds to uint8 after each pass; we do the same
with ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)`` (PIL's kernel) and the same
rounding. What remains is PIL's 22-bit fixed-point arithmetic: pixels agree with the processor to within
one uint8 step (about 0.015 after normalisation), see ``tests/unit/test_vision_preprocess.py``.

Text. The real anchor model uses the ``CLIPTokenizer`` files of openai/clip-vit-large-patch14-336
(:func:`load_clip_tokenizer`, local directory only). Tiny models have no downloadable vocabulary, so
:func:`build_tiny_clip_tokenizer` builds a word-level tokenizer in code with CLIP's conventions: BOS
``<|startoftext|>`` and EOS ``<|endoftext|>`` around every text, EOS doubling as padding, lower-case,
truncation that keeps EOS last.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vrshq.vision_config import ClipImageConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = [
    "TINY_CLIP_BOS",
    "TINY_CLIP_EOS",
    "TINY_CLIP_UNK",
    "build_tiny_clip_tokenizer",
    "clip_preprocess",
    "load_clip_tokenizer",
    "resized_hw",
    "to_frame_tensor",
    "tokenize_texts",
]

TINY_CLIP_BOS = "<|startoftext|>"
TINY_CLIP_EOS = "<|endoftext|>"
TINY_CLIP_UNK = "[UNK]"


def resized_hw(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """Output size of "resize the shortest side to ``shortest_edge``, keep the aspect ratio".

    Same rule as ``transformers.image_transforms.get_resize_output_image_size(default_to_square=False)``:
    the long side is ``int(shortest_edge * long / short)`` (truncated, not rounded).

    Example:
        >>> resized_hw(480, 854, 224)
        (224, 398)
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"frame size must be positive, got height={height}, width={width}")
    if width <= height:
        return int(shortest_edge * height / width), shortest_edge
    return shortest_edge, int(shortest_edge * width / height)


def to_frame_tensor(frames: Tensor | np.ndarray, *, name: str = "frames") -> Tensor:
    """Check that ``frames`` is uint8 ``(N, H, W, 3)`` RGB (tensor or numpy) and return it as a tensor.

    Numpy input shares memory with the result (``torch.from_numpy``); nothing is copied here.
    """
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, Tensor):
        raise TypeError(f"{name} must be a uint8 tensor or numpy array (N, H, W, 3), got {type(frames).__name__}")
    if frames.dtype != torch.uint8:
        raise TypeError(f"{name} must be uint8 RGB (N, H, W, 3), got dtype {frames.dtype}")
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (N, H, W, 3), got {tuple(frames.shape)}")
    if frames.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one frame, got shape {tuple(frames.shape)}")
    return frames


def _round_to_uint8_range(x: Tensor) -> Tensor:
    # PIL stores every resampling pass as uint8 (round half up, clip to [0, 255]).
    return x.add_(0.5).floor_().clamp_(0.0, 255.0)


def clip_preprocess(
    frames: Tensor | np.ndarray,
    cfg: ClipImageConfig,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Resize (shortest side), centre-crop and normalise uint8 RGB frames for a CLIP vision tower.

    Args:
        frames: uint8 ``(N, H, W, 3)`` RGB, tensor (any device) or numpy.
        cfg: sizes and mean/std.
        device: where to compute; default the device of ``frames`` (CPU for numpy).
        dtype: dtype of the returned pixels (computation is float32).

    Returns:
        ``(N, 3, crop_size, crop_size)`` normalised pixels.

    Example:
        >>> cfg = ClipImageConfig(shortest_edge=224, crop_size=224)
        >>> clip_preprocess(torch.zeros(2, 480, 640, 3, dtype=torch.uint8), cfg).shape
        torch.Size([2, 3, 224, 224])
    """
    if not isinstance(cfg, ClipImageConfig):
        raise TypeError(f"cfg must be a ClipImageConfig, got {type(cfg).__name__}")
    frames = to_frame_tensor(frames)
    target = torch.device(device) if device is not None else frames.device
    _, height, width, _ = frames.shape
    new_h, new_w = resized_hw(height, width, cfg.shortest_edge)

    x = frames.to(target, non_blocking=True).permute(0, 3, 1, 2).float()  # (N, 3, H, W)
    if new_w != width:
        x = F.interpolate(x, size=(height, new_w), mode="bicubic", antialias=True, align_corners=False)
        x = _round_to_uint8_range(x)
    if new_h != height:
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
        x = _round_to_uint8_range(x)

    crop = cfg.crop_size
    top = (new_h - crop) // 2
    left = (new_w - crop) // 2
    x = x[:, :, top : top + crop, left : left + crop]

    mean = torch.tensor(cfg.mean, device=target, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=target, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x / 255.0 - mean) / std).to(dtype)


def build_tiny_clip_tokenizer(words: Iterable[str], *, model_max_length: int = 77) -> PreTrainedTokenizerFast:
    """Word-level tokenizer with CLIP's conventions, for random-init tiny anchor models.

    Vocabulary: ``<|startoftext|>`` = 0, ``<|endoftext|>`` = 1 (EOS and pad), ``[UNK]`` = 2, then the
    distinct lower-cased ``words`` in the given order. Text is NFC-normalised, lower-cased and split on
    whitespace and punctuation (``tokenizers`` ``Whitespace``: ``\\w+|[^\\w\\s]+``); unknown words map to
    ``[UNK]``. Every text becomes ``BOS ... EOS``; truncation keeps EOS last. Pair it with
    :func:`vrshq.vision_config.tiny_anchor` (``bos 0, eos 1, pad 1``) and a text vocabulary of at
    least ``len(tokenizer)``.

    Args:
        words: vocabulary words (duplicates and case variants are merged).
        model_max_length: the tokenizer's default max length (CLIP: 77).

    Returns:
        A ``transformers`` fast tokenizer (a ``PreTrainedTokenizerBase``).

    Example:
        >>> tok = build_tiny_clip_tokenizer(["red", "circle"])
        >>> tok("A red circle")["input_ids"]
        [0, 2, 3, 4, 1]
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {TINY_CLIP_BOS: 0, TINY_CLIP_EOS: 1, TINY_CLIP_UNK: 2}
    for word in words:
        if not isinstance(word, str) or not word.strip():
            raise ValueError(f"words must be non-empty strings, got {word!r}")
        vocab.setdefault(word.strip().lower(), len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=TINY_CLIP_UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{TINY_CLIP_BOS} $A {TINY_CLIP_EOS}",
        special_tokens=[(TINY_CLIP_BOS, vocab[TINY_CLIP_BOS]), (TINY_CLIP_EOS, vocab[TINY_CLIP_EOS])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=TINY_CLIP_BOS,
        eos_token=TINY_CLIP_EOS,
        pad_token=TINY_CLIP_EOS,
        unk_token=TINY_CLIP_UNK,
        model_max_length=model_max_length,
    )


def load_clip_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """Load the ``CLIPTokenizer`` files (vocab.json, merges.txt, ...) from a local directory; never downloads.

    Raises:
        FileNotFoundError: ``path`` is not a directory; the message says what to put there.
    """
    if not isinstance(path, str) or not os.path.isdir(path):
        raise FileNotFoundError(
            f"CLIP tokenizer directory {path!r} not found: put the tokenizer files of "
            "openai/clip-vit-large-patch14-336 (vocab.json, merges.txt, tokenizer_config.json, "
            "special_tokens_map.json) there, set AnchorConfig.tokenizer_path/weights_path to it, or pass "
            "a tokenizer object"
        )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def tokenize_texts(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    max_length: int,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Tokenize texts for CLIP: pad to the longest, truncate to ``max_length`` (fixes method §9 item 7).

    Returns:
        ``input_ids`` and ``attention_mask``, both ``(E, L)`` long with ``L <= max_length``.
    """
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
        raise TypeError(f"texts must be a non-empty list of strings, got {texts!r}")
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"texts must hold strings, got {type(text).__name__} {text!r}")
    encoded = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    input_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]
    if device is not None:
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    return input_ids, attention_mask
