"""The Chat-UniVi-style multimodal LLM of VRS-HQ on `transformers.LlamaForCausalLM` (method §0, §1.6, §2).

Visual tokens (from `VisualTokenizer`, `tokens_per_frame` per frame) replace the `IMAGE_TOKEN_INDEX`
placeholders of each prompt; prompts of several expressions run as one right-padded batch with an
attention mask. Inference is one teacher-forced pass: nothing is generated.

The `[SEG]`/`[TAK]` states are the **last layer after the final RMSNorm** at the position
**immediately before** each token (the state whose LM-head output predicts it; method §2).
"""

from __future__ import annotations

import numbers

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vrshq.model.tokens import IGNORE_INDEX, IMAGE_TOKEN_INDEX, VrshqTokenIds

__all__ = ["MllmInputs", "MllmOutput", "VrshqMLLM", "build_llama"]


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
        seg_positions: per prompt, (n_i,) positions of the states used for its `[SEG]` tokens
            (one before each token), in frame order.
        tak_positions: (B,) position of the state used for `[TAK]`.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    seg_positions: tuple[torch.Tensor, ...]
    tak_positions: torch.Tensor


@dataclass(frozen=True)
class MllmOutput:
    """Hidden states of the batch.

    Attributes:
        hidden_states: (B, L, H) last layer after the final norm.
        seg_hidden: per prompt, (n_i, H) states before its `[SEG]` tokens.
        tak_hidden: (B, H) states before `[TAK]`.
        ce_loss: shifted token cross-entropy over the supervised tokens, or None without labels.
    """

    hidden_states: torch.Tensor
    seg_hidden: tuple[torch.Tensor, ...]
    tak_hidden: torch.Tensor
    ce_loss: torch.Tensor | None


def _as_id_list(ids: Sequence[int] | torch.Tensor, index: int, *, name: str = "input_ids") -> list[int]:
    """A 1-D id sequence as a host list (tensors are copied once, not read element by element)."""
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"{name}[{index}] must be 1-D, got shape {tuple(ids.shape)}")
        return [int(t) for t in ids.tolist()]
    out = list(ids)
    if any(not isinstance(t, numbers.Integral) for t in out):
        raise ValueError(f"{name}[{index}] must be 1-D ints, got {type(out[0]).__name__ if out else 'nothing'}")
    return [int(t) for t in out]


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
        k = self.tokens_per_frame
        seg_id, tak_id = self.token_ids.seg_token_id, self.token_ids.tak_token_id
        # The layout is computed on the host from the id lists (no device syncs); the device then
        # does one embedding lookup for every text token of the batch and two scatters.
        id_rows = [_as_id_list(ids_b, b) for b, ids_b in enumerate(input_ids)]
        lengths, text_rows, text_cols, text_ids, vis_rows, vis_cols = [], [], [], [], [], []
        seg_positions_host, tak_positions = [], []
        label_layout: list[list[int]] = []
        for b, (ids, vis_b) in enumerate(zip(id_rows, visual_tokens)):
            n_frames = int(vis_b.shape[0])
            if vis_b.dim() != 3 or vis_b.shape[1] != k or vis_b.shape[2] != self.hidden_size:
                raise ValueError(
                    f"visual_tokens[{b}] must be (n, {k}, {self.hidden_size}), got {tuple(vis_b.shape)}"
                )
            n_image = sum(1 for t in ids if t == IMAGE_TOKEN_INDEX)
            n_seg, n_tak = ids.count(seg_id), ids.count(tak_id)
            if n_image != n_frames or n_seg != n_frames:
                raise ValueError(
                    f"prompt {b} has {n_image} <image> placeholders and {n_seg} [SEG] tokens but "
                    f"{n_frames} frames; every frame needs one of each (method §1.3)"
                )
            if n_tak != 1:
                raise ValueError(f"prompt {b} has {n_tak} [TAK] tokens; exactly one is required (method §1.3)")
            lab = None
            if labels is not None:
                lab = _as_id_list(labels[b], b, name="labels")
                if len(lab) != len(ids):
                    raise ValueError(f"labels[{b}] shape ({len(lab)},) != input_ids shape ({len(ids)},)")
            # expanded sequence: each placeholder becomes k visual slots
            pos, segs, row_labels = 0, [], []
            for i, t in enumerate(ids):
                if t == IMAGE_TOKEN_INDEX:
                    vis_rows.extend([b] * k)
                    vis_cols.extend(range(pos, pos + k))
                    row_labels.extend([IGNORE_INDEX] * k)
                    pos += k
                    continue
                text_rows.append(b)
                text_cols.append(pos)
                text_ids.append(t)
                if t == seg_id:
                    segs.append(pos - 1)
                elif t == tak_id:
                    tak_positions.append(pos - 1)
                row_labels.append(lab[i] if lab is not None else IGNORE_INDEX)
                pos += 1
            lengths.append(pos)
            seg_positions_host.append(segs)
            label_layout.append(row_labels)
        batch, max_len = len(id_rows), max(lengths)
        text_embeds = embed(torch.tensor(text_ids, dtype=torch.long).to(device))
        inputs_embeds = text_embeds.new_zeros(batch, max_len, text_embeds.shape[-1])
        inputs_embeds = inputs_embeds.index_put(
            (torch.tensor(text_rows).to(device), torch.tensor(text_cols).to(device)), text_embeds
        )
        if vis_rows:
            visual = torch.cat([v.reshape(-1, v.shape[-1]) for v in visual_tokens if v.shape[0] > 0])
            inputs_embeds = inputs_embeds.index_put(
                (torch.tensor(vis_rows).to(device), torch.tensor(vis_cols).to(device)),
                visual.to(device=device, dtype=text_embeds.dtype),
            )
        length_t = torch.tensor(lengths)
        attention_mask = (torch.arange(max_len)[None, :] < length_t[:, None]).long().to(device)
        label_tensor = None
        if labels is not None:
            padded = [row + [IGNORE_INDEX] * (max_len - len(row)) for row in label_layout]
            label_tensor = torch.tensor(padded, dtype=torch.long).to(device)
        return MllmInputs(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            labels=label_tensor,
            seg_positions=tuple(torch.tensor(p, dtype=torch.long).to(device) for p in seg_positions_host),
            tak_positions=torch.tensor(tak_positions, dtype=torch.long).to(device),
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
        seg_hidden = tuple(hidden[b, pos] for b, pos in enumerate(inputs.seg_positions))
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
        return MllmOutput(hidden_states=hidden, seg_hidden=seg_hidden, tak_hidden=tak_hidden, ce_loss=ce)
