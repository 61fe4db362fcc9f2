"""Which frames the MLLM sees at inference (method §1.4): a CLIP-336 anchor, then a stride through it.

1. :class:`AnchorFrameSampler` scores every frame of the video against each expression with a
   ``transformers.CLIPModel`` (``logits_per_image``), soft-maxes over frames and takes the argmax as
   the anchor. The frames are encoded once per video and shared by all expressions; texts are
   truncated to the text model's length (the official code crashes on long queries, §9 item 7).
2. :func:`sample_frame_indices` takes ``start = anchor mod step`` and every ``step``-th frame after it,
   ``step = ceil(T / (max_frames - 1))``. The count varies with T (T <= 11 -> all, T = 12 -> 6,
   T = 100 -> 10 for ``max_frames = 12``; §9 item 6) and the anchor is always included.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from vrshq.model.clip_preprocess import clip_preprocess, load_clip_tokenizer, to_frame_tensor, tokenize_texts
from vrshq.model.vision import check_local_weights_dir
from vrshq.vision_config import AnchorConfig

if TYPE_CHECKING:
    from transformers import CLIPModel, PreTrainedTokenizerBase

__all__ = ["AnchorFrameSampler", "AnchorSelection", "build_clip_model", "sample_frame_indices"]


def sample_frame_indices(num_frames: int, anchor: int, *, max_frames: int = 12) -> list[int]:
    """Frames fed to the MLLM: every ``ceil(T / (max_frames - 1))``-th frame, phase-locked to the anchor.

    ``max_frames = 1`` gives ``[anchor]`` (the official ``max_image_token == 1`` branch).

    Args:
        num_frames: T, frames in the video.
        anchor: the CLIP anchor frame, ``0 <= anchor < T``.
        max_frames: the frame cap (``AnchorConfig.max_frames``, 12 in VRS-HQ).

    Returns:
        Sorted frame indices, containing ``anchor``, at most ``max(1, max_frames - 1)`` of them.

    Example:
        >>> sample_frame_indices(12, 5)
        [1, 3, 5, 7, 9, 11]
        >>> len(sample_frame_indices(100, 37))
        10
    """
    for name, value in (("num_frames", num_frames), ("anchor", anchor), ("max_frames", max_frames)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not 0 <= anchor < num_frames:
        raise ValueError(f"anchor must be in [0, num_frames={num_frames}), got {anchor}")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if max_frames == 1:
        return [int(anchor)]
    step = math.ceil(num_frames / (max_frames - 1))
    return list(range(int(anchor) % step, int(num_frames), step))


def build_clip_model(cfg: AnchorConfig) -> CLIPModel:
    """``CLIPModel``: random init from ``cfg`` if ``cfg.weights_path`` is None, else from that local dir."""
    from transformers import CLIPConfig, CLIPModel

    if cfg.weights_path is None:
        text_config = {
            "vocab_size": cfg.text_vocab_size,
            "hidden_size": cfg.text_hidden_size,
            "intermediate_size": cfg.text_intermediate_size,
            "num_hidden_layers": cfg.text_num_hidden_layers,
            "num_attention_heads": cfg.text_num_attention_heads,
            "max_position_embeddings": cfg.text_max_position_embeddings,
            "hidden_act": cfg.hidden_act,
            "layer_norm_eps": cfg.layer_norm_eps,
            "bos_token_id": cfg.text_bos_token_id,
            "eos_token_id": cfg.text_eos_token_id,
            "pad_token_id": cfg.text_pad_token_id,
        }
        vision_config = {
            "hidden_size": cfg.vision_hidden_size,
            "intermediate_size": cfg.vision_intermediate_size,
            "num_hidden_layers": cfg.vision_num_hidden_layers,
            "num_attention_heads": cfg.vision_num_attention_heads,
            "patch_size": cfg.vision_patch_size,
            "image_size": cfg.vision_image_size,
            "hidden_act": cfg.hidden_act,
            "layer_norm_eps": cfg.layer_norm_eps,
        }
        hf_config = CLIPConfig(
            text_config=text_config,
            vision_config=vision_config,
            projection_dim=cfg.projection_dim,
            logit_scale_init_value=cfg.logit_scale_init_value,
        )
        return CLIPModel(hf_config)
    check_local_weights_dir(
        cfg.weights_path, field="AnchorConfig.weights_path", what="openai/clip-vit-large-patch14-336"
    )
    model = CLIPModel.from_pretrained(cfg.weights_path, local_files_only=True)
    vision = model.config.vision_config
    if vision.image_size != cfg.vision_image_size or vision.patch_size != cfg.vision_patch_size:
        raise ValueError(
            f"AnchorConfig vision_image_size/vision_patch_size {cfg.vision_image_size}/{cfg.vision_patch_size} "
            f"do not match the checkpoint in {cfg.weights_path!r} ({vision.image_size}/{vision.patch_size})"
        )
    return model


@dataclass(frozen=True)
class AnchorSelection:
    """Per-expression anchor and MLLM frames for one video.

    Attributes:
        probs: ``(E, T)`` float32, softmax over frames of CLIP ``logits_per_image`` for each expression.
        anchors: the argmax frame per expression (``E`` ints).
        frame_indices: sorted MLLM frame indices per expression, each containing its anchor.
    """

    probs: Tensor
    anchors: list[int]
    frame_indices: list[list[int]]


class AnchorFrameSampler(nn.Module):
    """CLIP-336 anchor scoring plus strided frame sampling (method §1.4), batched per video.

    Frames are preprocessed and encoded in chunks of ``cfg.image_batch_size`` on the module's device
    (one host-to-device copy per chunk); all expressions are encoded in one text batch; the scores of
    all (frame, expression) pairs are one matrix product. The CLIP model is frozen and in eval mode.

    Args:
        cfg: model sizes or local weights, ``max_frames``, text length, chunk size.
        tokenizer: any ``transformers.PreTrainedTokenizerBase``. Default: ``CLIPTokenizer`` files from
            ``cfg.tokenizer_path`` (or ``cfg.weights_path``). For tiny random models pass
            :func:`vrshq.model.clip_preprocess.build_tiny_clip_tokenizer` output.

    Raises:
        ValueError: no tokenizer and no path to load one from, or the tokenizer has more tokens than
            the text model's vocabulary.

    Example:
        >>> from vrshq.vision_config import tiny_anchor
        >>> from vrshq.model.clip_preprocess import build_tiny_clip_tokenizer
        >>> sampler = AnchorFrameSampler(tiny_anchor(), tokenizer=build_tiny_clip_tokenizer(["red", "ball"]))
        >>> frames = torch.zeros(12, 24, 32, 3, dtype=torch.uint8)
        >>> [len(ix) for ix in sampler.select_frames(frames, ["the red ball", "a ball"])]
        [6, 6]
    """

    def __init__(self, cfg: AnchorConfig, *, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
        super().__init__()
        if not isinstance(cfg, AnchorConfig):
            raise TypeError(f"cfg must be an AnchorConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        if tokenizer is None:
            path = cfg.resolved_tokenizer_path
            if path is None:
                raise ValueError(
                    "AnchorFrameSampler needs a tokenizer: pass tokenizer=... (e.g. build_tiny_clip_tokenizer"
                    "(words) for tiny models) or set AnchorConfig.tokenizer_path/weights_path to a local "
                    "CLIP snapshot"
                )
            tokenizer = load_clip_tokenizer(path)
        from transformers import PreTrainedTokenizerBase

        if not isinstance(tokenizer, PreTrainedTokenizerBase):
            raise TypeError(f"tokenizer must be a transformers PreTrainedTokenizerBase, got {type(tokenizer).__name__}")
        self.tokenizer = tokenizer
        self.clip_model = build_clip_model(cfg)
        vocab = self.clip_model.config.text_config.vocab_size
        if len(tokenizer) > vocab:
            raise ValueError(
                f"tokenizer has {len(tokenizer)} tokens but the CLIP text model's vocabulary has {vocab}; "
                "raise AnchorConfig.text_vocab_size (tiny_anchor(vocab_size=...)) or use the matching tokenizer"
            )
        self.max_text_length = min(cfg.text_max_length, self.clip_model.config.text_config.max_position_embeddings)
        self.clip_model.requires_grad_(False)
        self.clip_model.eval()

    def train(self, mode: bool = True) -> AnchorFrameSampler:
        """The frozen CLIP model always stays in eval mode."""
        super().train(mode)
        self.clip_model.eval()
        return self

    @property
    def device(self) -> torch.device:
        """Device of the CLIP weights."""
        return self.clip_model.logit_scale.device

    def preprocess(self, frames: Tensor | np.ndarray) -> Tensor:
        """uint8 ``(T, H, W, 3)`` -> ``(T, 3, S, S)`` (shortest side S bicubic, centre crop S; S = 336)."""
        return clip_preprocess(frames, self.cfg.image, device=self.device, dtype=self.clip_model.dtype)

    @torch.no_grad()
    def encode_frames(self, frames: Tensor | np.ndarray) -> Tensor:
        """L2-normalised CLIP image embeddings ``(T, projection_dim)`` float32, chunked over frames."""
        frames = to_frame_tensor(frames)
        chunks = []
        for start in range(0, frames.shape[0], self.cfg.image_batch_size):
            pixels = self.preprocess(frames[start : start + self.cfg.image_batch_size])
            pooled = self.clip_model.vision_model(pixel_values=pixels).pooler_output
            chunks.append(self.clip_model.visual_projection(pooled).float())
        embeds = torch.cat(chunks, dim=0)
        return embeds / embeds.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def encode_texts(self, expressions: Sequence[str]) -> Tensor:
        """L2-normalised CLIP text embeddings ``(E, projection_dim)`` float32 (texts truncated)."""
        input_ids, attention_mask = tokenize_texts(
            self.tokenizer, expressions, max_length=self.max_text_length, device=self.device
        )
        pooled = self.clip_model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        embeds = self.clip_model.text_projection(pooled).float()
        return embeds / embeds.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def frame_probs(self, frames: Tensor | np.ndarray, expressions: Sequence[str]) -> Tensor:
        """``(E, T)`` softmax over frames of ``logits_per_image`` (= ``CLIPModel(...).logits_per_image.T``)."""
        image_embeds = self.encode_frames(frames)
        text_embeds = self.encode_texts(expressions)
        logits_per_text = self.clip_model.logit_scale.exp().float() * text_embeds @ image_embeds.T  # (E, T)
        return logits_per_text.softmax(dim=-1)

    @torch.no_grad()
    def forward(self, frames: Tensor | np.ndarray, expressions: Sequence[str]) -> AnchorSelection:
        """Anchor and MLLM frames for every expression of one video (frames encoded once)."""
        frames = to_frame_tensor(frames)
        probs = self.frame_probs(frames, expressions)
        anchors = probs.argmax(dim=-1).tolist()  # first maximum on ties; one device sync per video
        num_frames = frames.shape[0]
        selected = [sample_frame_indices(num_frames, a, max_frames=self.cfg.max_frames) for a in anchors]
        return AnchorSelection(probs=probs, anchors=anchors, frame_indices=selected)

    def select_frames(self, frames: Tensor | np.ndarray, expressions: Sequence[str]) -> list[list[int]]:
        """Sorted MLLM frame indices per expression (contract API); see :meth:`forward` for the scores.

        Args:
            frames: uint8 RGB ``(T, H, W, 3)`` of the whole video.
            expressions: the E referring / reasoning expressions.

        Returns:
            E lists of sorted frame indices, each containing that expression's anchor.
        """
        return self.forward(frames, expressions).frame_indices
