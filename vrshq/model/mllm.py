"""The Chat-UniVi-style multimodal LLM of VRS-HQ on `transformers.LlamaForCausalLM` (method §0, §1.6, §2).

Visual tokens (from `VisualTokenizer`, `tokens_per_frame` per frame) replace the `IMAGE_TOKEN_INDEX`
placeholders of each prompt; prompts of several expressions run as one right-padded batch with an
attention mask. Inference is one teacher-forced pass: nothing is generated.

The `[SEG]`/`[TAK]` states are the **last layer after the final RMSNorm** at the position
**immediately before** each token (the state whose LM-head output predicts it; method §2).
"""

from __future__ import annotations

import itertools
import numbers

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vrshq.model.tokens import IGNORE_INDEX, IMAGE_TOKEN_INDEX, VrshqTokenIds

__all__ = [
    "ExpandedLayout", "MllmInputs", "MllmOutput", "VrshqMLLM", "build_llama", "expanded_layout", "ragged_positions",
]


def build_llama(
    *,
    vocab_size: int,
    hidden_size: int,
    intermediate_size: int,
    num_hidden_layers: int,
    num_attention_heads: int,
    num_key_value_heads: int,
    max_position_embeddings: int,
    rms_norm_eps: float,
    rope_theta: float,
    attn_implementation: str = "sdpa",
):
    """A randomly initialised `LlamaForCausalLM` (weights come from a checkpoint later)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=rms_norm_eps,
        rope_theta=rope_theta,
        tie_word_embeddings=False,
        attn_implementation=attn_implementation,
    )
    return LlamaForCausalLM(config)


@dataclass(frozen=True)
class MllmInputs:
    """A right-padded multimodal batch (B prompts, L = longest expanded prompt, H = hidden size).

    Attributes:
        inputs_embeds: (B, L, H) text embeddings with visual tokens spliced in.
        attention_mask: (B, L) long, 1 for real tokens.
        labels: (B, L) long (-100 for the instruction, visual tokens and padding) or None.
        seg_rows, seg_cols: (S,) prompt and position of the state used for each `[SEG]` token of the batch
            (one before each token), prompt by prompt and in frame order within one.
        seg_counts: per prompt, its number of `[SEG]` tokens n_i (sum S).
        tak_positions: (B,) position of the state used for `[TAK]`.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    seg_rows: torch.Tensor
    seg_cols: torch.Tensor
    seg_counts: tuple[int, ...]
    tak_positions: torch.Tensor

    @property
    def seg_positions(self) -> tuple[torch.Tensor, ...]:
        """Per prompt, (n_i,) positions of the states used for its `[SEG]` tokens (views of ``seg_cols``)."""
        return self.seg_cols.split(self.seg_counts)


@dataclass(frozen=True)
class MllmOutput:
    """Hidden states of the batch.

    Attributes:
        hidden_states: (B, L, H) last layer after the final norm.
        seg_hidden_flat: (S, H) states before every `[SEG]` token of the batch, prompt by prompt (one tensor,
            so that a head runs over all of them in one call).
        seg_counts: per prompt, its number of `[SEG]` tokens n_i (sum S).
        tak_hidden: (B, H) states before `[TAK]`.
        ce_loss: shifted token cross-entropy over the supervised tokens, or None without labels.
    """

    hidden_states: torch.Tensor
    seg_hidden_flat: torch.Tensor
    seg_counts: tuple[int, ...]
    tak_hidden: torch.Tensor
    ce_loss: torch.Tensor | None

    @property
    def seg_hidden(self) -> tuple[torch.Tensor, ...]:
        """Per prompt, (n_i, H) states before its `[SEG]` tokens (views of ``seg_hidden_flat``)."""
        return self.seg_hidden_flat.split(self.seg_counts)


def _as_id_list(ids: Sequence[int] | torch.Tensor, index: int, *, name: str = "input_ids") -> list[int]:
    """A 1-D id sequence as a host list (tensors are copied once, not read element by element)."""
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"{name}[{index}] must be 1-D, got shape {tuple(ids.shape)}")
        return [int(t) for t in ids.tolist()]
    out = list(ids)
    if all(type(t) is int for t in out):  # the common case, ~5x faster than the ABC check below
        return out
    if any(not isinstance(t, numbers.Integral) for t in out):
        raise ValueError(f"{name}[{index}] must be 1-D ints, got {type(out[0]).__name__ if out else 'nothing'}")
    return [int(t) for t in out]


@dataclass(frozen=True)
class ExpandedLayout:
    """Where each id of a batch of prompts lands once every `IMAGE_TOKEN_INDEX` becomes k visual slots.

    Attributes:
        ids: (N,) the ids of all prompts, concatenated.
        rows, cols: (N,) each id's prompt and its position in the expanded prompt (an image placeholder's
            first visual slot).
        is_image, is_seg, is_tak: (N,) whether the id is an image placeholder, `[SEG]`, `[TAK]`.
        lengths: (B,) expanded length of each prompt.
        image_counts, seg_counts, tak_counts: (B,) placeholders, `[SEG]` and `[TAK]` ids of each prompt.
    """

    ids: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    is_image: np.ndarray
    is_seg: np.ndarray
    is_tak: np.ndarray
    lengths: np.ndarray
    image_counts: np.ndarray
    seg_counts: np.ndarray
    tak_counts: np.ndarray

    def check_frames(self, frames: Sequence[int]) -> None:
        """Raise ValueError for the first prompt whose placeholders, `[SEG]` ids and frames differ in number,
        or whose `[TAK]` is not unique (method §1.3)."""
        frames_a = np.asarray(frames, dtype=np.int64)
        bad = np.flatnonzero((self.image_counts != frames_a) | (self.seg_counts != frames_a))
        if bad.size:
            b = int(bad[0])
            raise ValueError(
                f"prompt {b} has {self.image_counts[b]} <image> placeholders and {self.seg_counts[b]} [SEG] tokens "
                f"but {frames_a[b]} frames; every frame needs one of each (method §1.3)"
            )
        bad = np.flatnonzero(self.tak_counts != 1)
        if bad.size:
            b = int(bad[0])
            raise ValueError(
                f"prompt {b} has {self.tak_counts[b]} [TAK] tokens; exactly one is required (method §1.3)"
            )


def ragged_positions(counts: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For groups of ``counts`` elements laid end to end: each element's group and its index in the group.

    >>> ragged_positions([2, 0, 3])
    (array([0, 0, 2, 2, 2]), array([0, 1, 0, 1, 2]))
    """
    counts = np.asarray(counts, dtype=np.int64)
    groups = np.repeat(np.arange(counts.size), counts)
    return groups, np.arange(groups.size) - np.repeat(np.cumsum(counts) - counts, counts)


def expanded_layout(
    id_rows: Sequence[Sequence[int]], *, tokens_per_frame: int, seg_id: int, tak_id: int
) -> ExpandedLayout:
    """The :class:`ExpandedLayout` of ``id_rows`` (B non-empty prompts), computed for the whole batch at once."""
    batch = len(id_rows)
    counts = np.fromiter((len(r) for r in id_rows), dtype=np.int64, count=batch)
    ids = np.fromiter(itertools.chain.from_iterable(id_rows), dtype=np.int64, count=int(counts.sum()))
    rows, index_in_row = ragged_positions(counts)
    is_image = ids == IMAGE_TOKEN_INDEX
    width = np.where(is_image, tokens_per_frame, 1)
    before = np.cumsum(width) - width  # expanded slots before each id, across the whole batch
    row_start = np.arange(ids.size) - index_in_row  # index of each id's prompt's first id
    cols = before - before[row_start]

    is_seg, is_tak = ids == seg_id, ids == tak_id

    def per_row(mask: np.ndarray) -> np.ndarray:
        return np.bincount(rows[mask], minlength=batch).astype(np.int64)

    return ExpandedLayout(
        ids=ids, rows=rows, cols=cols, is_image=is_image, is_seg=is_seg, is_tak=is_tak,
        lengths=np.bincount(rows, weights=width, minlength=batch).astype(np.int64),
        image_counts=per_row(is_image), seg_counts=per_row(is_seg), tak_counts=per_row(is_tak),
    )


def _distinct_visual_rows(visual_tokens: Sequence[torch.Tensor], k: int) -> tuple[torch.Tensor, np.ndarray]:
    """The distinct tensors of ``visual_tokens`` as one (R, H) tensor, and per prompt the row of its first
    token there. Prompts that pass the same tensor object (the expressions of one clip) share its rows."""
    parts: list[torch.Tensor] = []
    first_of: dict[int, int] = {}
    first_row = np.empty(len(visual_tokens), dtype=np.int64)
    offset = 0
    for b, vis in enumerate(visual_tokens):
        key = id(vis)
        if key not in first_of:
            first_of[key] = offset
            parts.append(vis.reshape(-1, vis.shape[-1]))
            offset += int(vis.shape[0]) * k
        first_row[b] = first_of[key]
    return (torch.cat(parts) if len(parts) > 1 else parts[0]), first_row


class VrshqMLLM(nn.Module):
    """LLaMA with visual-token splicing and `[SEG]`/`[TAK]` state extraction.

    Parameter names: `llm.model.embed_tokens.weight`, `llm.model.layers.{i}...`, `llm.model.norm.weight`,
    `llm.lm_head.weight` (the `transformers` names under `llm.`).

    Args:
        llm: a `transformers.LlamaForCausalLM` whose embedding already covers `[SEG]`/`[TAK]`.
        token_ids: ids of `[SEG]`/`[TAK]`.
        tokens_per_frame: visual tokens per `<image>` placeholder (112 for Chat-UniVi, from the vision config).
    """

    def __init__(self, llm: nn.Module, *, token_ids: VrshqTokenIds, tokens_per_frame: int) -> None:
        super().__init__()
        if not isinstance(tokens_per_frame, int) or tokens_per_frame < 1:
            raise ValueError(f"tokens_per_frame must be a positive int, got {tokens_per_frame!r}")
        vocab = llm.get_input_embeddings().num_embeddings
        for name in ("seg_token_id", "tak_token_id"):
            if getattr(token_ids, name) >= vocab:
                raise ValueError(
                    f"{name}={getattr(token_ids, name)} is outside the LLM embedding of {vocab} rows; resize the "
                    "token embeddings after add_vrshq_tokens"
                )
        self.llm = llm
        self.token_ids = token_ids
        self.tokens_per_frame = tokens_per_frame

    @property
    def hidden_size(self) -> int:
        return int(self.llm.config.hidden_size)

    # ------------------------------------------------------------------------------------------- inputs
    def build_inputs(
        self,
        input_ids: Sequence[Sequence[int] | torch.Tensor],
        visual_tokens: Sequence[torch.Tensor],
        labels: Sequence[Sequence[int] | torch.Tensor] | None = None,
    ) -> MllmInputs:
        """Splice visual tokens into prompt embeddings and pad the batch on the right.

        The layout is computed on the host for the whole batch at once (:func:`expanded_layout`: a few numpy
        operations, not a Python step per token), and the device does one embedding lookup, one gather of the
        visual tokens and two scatters. Why: a stage-G batch has 768 prompts of ~50 ids and ~200 frames of
        visual tokens; a loop per token and per prompt cost ~0.8 s of host time a step (CPU, 2024-class core),
        more than the GPU's work. Prompts that share one visual-token tensor (the expressions of one clip) share
        its rows in the gather, so its gradient is summed by one scatter-add instead of one add per prompt.

        Args:
            input_ids: per prompt, ids with one `IMAGE_TOKEN_INDEX` per frame (`encode_prompt`).
            visual_tokens: per prompt, (n_i, tokens_per_frame, H) visual tokens of its frames in order.
            labels: per prompt, labels aligned with `input_ids` (visual tokens get -100), or None.

        Raises:
            ValueError: if the placeholder, `[SEG]` and frame counts differ, or `[TAK]` is not unique.
        """
        if len(input_ids) != len(visual_tokens) or not input_ids:
            raise ValueError(f"got {len(input_ids)} prompts and {len(visual_tokens)} visual token sets")
        if labels is not None and len(labels) != len(input_ids):
            raise ValueError(f"got {len(labels)} label rows for {len(input_ids)} prompts")
        embed = self.llm.get_input_embeddings()
        device = embed.weight.device
        k, hidden = self.tokens_per_frame, self.hidden_size
        id_rows = [_as_id_list(ids_b, b) for b, ids_b in enumerate(input_ids)]
        for b, vis_b in enumerate(visual_tokens):
            if vis_b.dim() != 3 or vis_b.shape[1] != k or vis_b.shape[2] != hidden:
                raise ValueError(f"visual_tokens[{b}] must be (n, {k}, {hidden}), got {tuple(vis_b.shape)}")
        label_rows = None
        if labels is not None:
            label_rows = [_as_id_list(lab, b, name="labels") for b, lab in enumerate(labels)]
            for b, (lab, ids) in enumerate(zip(label_rows, id_rows)):
                if len(lab) != len(ids):
                    raise ValueError(f"labels[{b}] shape ({len(lab)},) != input_ids shape ({len(ids)},)")
        layout = expanded_layout(id_rows, tokens_per_frame=k, seg_id=self.token_ids.seg_token_id,
                                 tak_id=self.token_ids.tak_token_id)
        layout.check_frames([int(v.shape[0]) for v in visual_tokens])

        def to_device(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(array)).to(device)

        batch, max_len = len(id_rows), int(layout.lengths.max())
        text = ~layout.is_image
        text_embeds = embed(to_device(layout.ids[text]))
        inputs_embeds = text_embeds.new_zeros(batch, max_len, text_embeds.shape[-1])
        inputs_embeds = inputs_embeds.index_put((to_device(layout.rows[text]), to_device(layout.cols[text])),
                                                text_embeds)
        if layout.is_image.any():
            visual, first_row = _distinct_visual_rows(visual_tokens, k)
            image_rows, frame = ragged_positions(layout.image_counts)  # placeholders come prompt by prompt
            source = ((first_row[image_rows] + frame * k)[:, None] + np.arange(k)).ravel()
            slots = (layout.cols[layout.is_image][:, None] + np.arange(k)).ravel()
            inputs_embeds = inputs_embeds.index_put(
                (to_device(np.repeat(image_rows, k)), to_device(slots)),
                visual.to(device=device, dtype=text_embeds.dtype)[to_device(source)],
            )
        attention_mask = (np.arange(max_len)[None, :] < layout.lengths[:, None]).astype(np.int64)
        label_tensor = None
        if label_rows is not None:
            flat_labels = np.fromiter(itertools.chain.from_iterable(label_rows), dtype=np.int64,
                                      count=layout.ids.size)
            padded = np.full((batch, max_len), IGNORE_INDEX, dtype=np.int64)
            padded[layout.rows[text], layout.cols[text]] = flat_labels[text]
            label_tensor = to_device(padded)
        return MllmInputs(
            inputs_embeds=inputs_embeds,
            attention_mask=to_device(attention_mask),
            labels=label_tensor,
            seg_rows=to_device(layout.rows[layout.is_seg]),
            seg_cols=to_device(layout.cols[layout.is_seg] - 1),
            seg_counts=tuple(int(n) for n in layout.seg_counts),
            tak_positions=to_device(layout.cols[layout.is_tak] - 1),
        )

    # ------------------------------------------------------------------------------------------ forward
    def forward(self, inputs: MllmInputs) -> MllmOutput:
        """One teacher-forced pass; CE only over supervised tokens when `inputs.labels` is set.

        The LM head runs only at the positions that predict a supervised token, which gives the same
        mean CE as full logits (method §6) without the (B, L, vocab) tensor.
        """
        out = self.llm.model(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            use_cache=False,
        )
        hidden = out.last_hidden_state
        seg_hidden_flat = hidden[inputs.seg_rows, inputs.seg_cols]  # one gather: its backward is one scatter
        batch_idx = torch.arange(hidden.shape[0], device=hidden.device)
        tak_hidden = hidden[batch_idx, inputs.tak_positions]
        ce = None
        if inputs.labels is not None:
            targets = inputs.labels[:, 1:]
            keep = targets != IGNORE_INDEX
            selected = hidden[:, :-1][keep]
            if selected.shape[0] == 0:
                ce = hidden.sum() * 0.0
            else:
                logits = self.llm.lm_head(selected)
                ce = F.cross_entropy(logits.float(), targets[keep])
        return MllmOutput(hidden_states=hidden, seg_hidden_flat=seg_hidden_flat, seg_counts=inputs.seg_counts,
                          tak_hidden=tak_hidden, ce_loss=ce)
