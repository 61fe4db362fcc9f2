"""The Chat-UniVi-style multimodal LLM of VRS-HQ on `transformers.LlamaForCausalLM` (method §0, §1.6, §2).

Visual tokens (from `VisualTokenizer`, `tokens_per_frame` per frame) replace the `IMAGE_TOKEN_INDEX`
placeholders of each prompt; prompts of several expressions run as one right-padded batch with an
attention mask. Inference is one teacher-forced pass: nothing is generated.

The `[SEG]`/`[TAK]` states are the **last layer after the final RMSNorm** at the position
**immediately before** each token (the state whose LM-head output predicts it; method §2).
"""

from __future__ import annotations

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
        rows, label_rows, seg_positions, tak_positions = [], [], [], []
        for b, (ids_b, vis_b) in enumerate(zip(input_ids, visual_tokens)):
            ids = torch.as_tensor(ids_b, dtype=torch.long, device=device)
            if ids.dim() != 1:
                raise ValueError(f"input_ids[{b}] must be 1-D, got shape {tuple(ids.shape)}")
            n_frames = int(vis_b.shape[0])
            if vis_b.dim() != 3 or vis_b.shape[1] != k or vis_b.shape[2] != self.hidden_size:
                raise ValueError(
                    f"visual_tokens[{b}] must be (n, {k}, {self.hidden_size}), got {tuple(vis_b.shape)}"
                )
            image_pos = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten()
            n_seg = int((ids == self.token_ids.seg_token_id).sum())
            n_tak = int((ids == self.token_ids.tak_token_id).sum())
            if len(image_pos) != n_frames or n_seg != n_frames:
                raise ValueError(
                    f"prompt {b} has {len(image_pos)} <image> placeholders and {n_seg} [SEG] tokens but "
                    f"{n_frames} frames; every frame needs one of each (method §1.3)"
                )
            if n_tak != 1:
                raise ValueError(f"prompt {b} has {n_tak} [TAK] tokens; exactly one is required (method §1.3)")
            # expanded id sequence: each placeholder becomes k visual slots (marked IMAGE_TOKEN_INDEX)
            counts = torch.ones_like(ids)
            counts[image_pos] = k
            expanded = ids.repeat_interleave(counts)
            text_embeds = embed(ids.clamp(min=0))
            pieces, start = [], 0
            for f, p in enumerate(image_pos.tolist()):
                pieces.append(text_embeds[start:p])
                pieces.append(vis_b[f].to(device=device, dtype=text_embeds.dtype))
                start = p + 1
            pieces.append(text_embeds[start:])
            rows.append(torch.cat(pieces, dim=0))
            seg_positions.append((expanded == self.token_ids.seg_token_id).nonzero().flatten() - 1)
            tak_positions.append(int((expanded == self.token_ids.tak_token_id).nonzero().flatten()[0]) - 1)
            if labels is not None:
                lab = torch.as_tensor(labels[b], dtype=torch.long, device=device)
                if lab.shape != ids.shape:
                    raise ValueError(f"labels[{b}] shape {tuple(lab.shape)} != input_ids shape {tuple(ids.shape)}")
                lab = lab.clone()
                lab[image_pos] = IGNORE_INDEX
                label_rows.append(lab.repeat_interleave(counts))
        max_len = max(r.shape[0] for r in rows)
        batch = len(rows)
        inputs_embeds = rows[0].new_zeros(batch, max_len, rows[0].shape[-1])
        attention_mask = torch.zeros(batch, max_len, dtype=torch.long, device=device)
        label_tensor = None
        if labels is not None:
            label_tensor = torch.full((batch, max_len), IGNORE_INDEX, dtype=torch.long, device=device)
        for b, row in enumerate(rows):
            inputs_embeds[b, : row.shape[0]] = row
            attention_mask[b, : row.shape[0]] = 1
            if label_tensor is not None:
                label_tensor[b, : row.shape[0]] = label_rows[b]
        return MllmInputs(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            labels=label_tensor,
            seg_positions=tuple(seg_positions),
            tak_positions=torch.tensor(tak_positions, dtype=torch.long, device=device),
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
