"""SAM2 memory conditioning that projects each memory frame's keys and values once.

SAM2's memory attention (``SAM2Base._prepare_memory_conditioned_features`` + ``MemoryAttention``)
rebuilds, at every frame it tracks, the cross-attention keys and values of every memory it reads:
with the VRS-HQ settings that is 7 memory frames of 64x64 tokens per layer and frame, each
projected from 64 to 256 channels and rotated (RoPE, in float32), although a memory frame is read
by up to 7 consecutive frames and its tokens only change by the temporal encoding of its distance.

Keys are linear in that encoding: ``k_proj(m + p + t) = k_proj(m + p) + W_k t`` and RoPE is linear
per token, so ``rope(k_proj(m + p + t)) = rope(k_proj(m + p)) + rope(W_k t)``. This module stores
``rope(k_proj(m + p))`` and ``v_proj(m)`` of every layer with the memory entry the first time it is
read (``PROJECTED_KEY`` in the entry dict, so it is trimmed and dropped with the entry), and the
``num_maskmem`` temporal terms ``rope(W_k t)`` once per model call. A tracking step then only
projects its object pointers and concatenates. Values equal the stock path up to rounding (tiny
model in float32: logits within ~1e-7, tests check; SAM2-L on an H200 in float32: identical masks),
and the step's queries, self-attention and MLP use the layer's own modules.

The memory attention's self- and cross-attention run here too, on CUDA with cuDNN attention in
calls of ``CUDNN_ROWS_PER_CALL`` rows (the last padded): cuDNN is ~2x faster than flash attention
for these single-head, 256-wide shapes (H200), and fixed row counts keep its per-shape execution
plans few and reused.

Used by lockstep tracking (``vrshq.model.sam2_lockstep``), which marks its memory bank with
``USE_PROJECTED_MEMORY``; ``VrshqSam2._prepare_memory_conditioned_features`` dispatches here.
Measured on one H200 (SAM2-L sizes, random init, bf16, 48 frames; ``benchmarks.tracking_speed``):
tracking 12 objects 1.96 s (stock) -> 1.83 s (projected) -> 1.41 s (plus cuDNN cross-attention,
4 rows per call); 34 objects 5.19 -> 4.65 -> 3.59 s.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from sam2.modeling.position_encoding import apply_rotary_enc
from sam2.modeling.sam.transformer import RoPEAttention
from sam2.modeling.sam2_utils import get_1d_sine_pe, select_closest_cond_frames

__all__ = ["COMPILE_LAYER_WORK", "PROJECTED_KEY", "USE_PROJECTED_MEMORY", "condition_on_projected_memory", "supports_projected_memory"]

#: Key of an ``output_dict`` that asks for this path (``True``); the stock code ignores it.
USE_PROJECTED_MEMORY = "use_projected_memory"
#: Key of a memory entry that holds its projections: one ``(keys, values)`` per layer, batch first.
PROJECTED_KEY = "projected_memory"
_TPOS_KEY = "projected_memory_tpos"


def supports_projected_memory(model: Any) -> bool:
    """Whether this path reproduces ``model``'s memory attention: RoPE cross-attention with keys
    from the memory plus its position encoding (the SAM2 / SAM2.1 configurations), in eval mode."""
    layers = getattr(model.memory_attention, "layers", [])
    return (
        not model.training
        and model.num_maskmem > 0
        and len(layers) > 0
        and all(
            isinstance(layer.cross_attn_image, RoPEAttention)
            and layer.cross_attn_image.rope_k_repeat
            and isinstance(layer.self_attn, RoPEAttention)
            and not layer.self_attn.rope_k_repeat
            and layer.pos_enc_at_cross_attn_keys
            for layer in layers
        )
    )


def _rope_freqs(attn: RoPEAttention, num_tokens: int, device: torch.device) -> torch.Tensor:
    """The layer's RoPE table for ``num_tokens`` query positions (as ``RoPEAttention.forward``)."""
    attn.freqs_cis = attn.freqs_cis.to(device)
    if attn.freqs_cis.shape[0] != num_tokens:
        side = math.sqrt(num_tokens)
        attn.freqs_cis = attn.compute_cis(end_x=side, end_y=side).to(device)
    return attn.freqs_cis


def _rotate(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """RoPE of ``x`` (B, heads, N, C) with N = the table's positions (float32 math, as sam2)."""
    rotated, _ = apply_rotary_enc(x, x[..., :0, :], freqs_cis=freqs)
    return rotated


def _project_entry(model: Any, entry: dict[str, Any], device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(rope(k_proj(m + p)), v_proj(m))`` per layer for one memory entry, stored in the entry."""
    projected = entry.get(PROJECTED_KEY)
    if projected is not None:
        return projected
    # memory may be stored in a narrower dtype (``memory_dtype``): compute in the weights' dtype, as
    # the stock path does once its concatenation with the pointers promotes it
    weight_dtype = model.memory_attention.layers[0].cross_attn_image.v_proj.weight.dtype
    memory = entry["maskmem_features"].to(device, weight_dtype, non_blocking=True).flatten(2).transpose(1, 2)
    pos = entry["maskmem_pos_enc"][-1].to(device).flatten(2).transpose(1, 2)
    keys_in = memory + pos
    projected = []
    for layer in model.memory_attention.layers:
        attn = layer.cross_attn_image
        keys = attn._separate_heads(attn.k_proj(keys_in), attn.num_heads)
        values = attn._separate_heads(attn.v_proj(memory), attn.num_heads)
        projected.append((_rotate(keys, _rope_freqs(attn, keys.shape[-2], device)), values))
    entry[PROJECTED_KEY] = projected
    return projected


def _temporal_keys(model: Any, output_dict: dict[str, Any], num_tokens: int, device: torch.device) -> list[torch.Tensor]:
    """``rope(W_k t)`` for every temporal encoding ``t`` and layer: (num_maskmem, heads, N, C) each."""
    cached = output_dict.get(_TPOS_KEY)
    if cached is not None and cached[0].shape[-2] == num_tokens:
        return cached
    tpos = model.maskmem_tpos_enc.reshape(model.num_maskmem, 1, -1).to(device)
    terms = []
    for layer in model.memory_attention.layers:
        attn = layer.cross_attn_image
        term = F.linear(tpos, attn.k_proj.weight).expand(-1, num_tokens, -1)
        term = attn._separate_heads(term, attn.num_heads)
        terms.append(_rotate(term, _rope_freqs(attn, num_tokens, device)))
    output_dict[_TPOS_KEY] = terms
    return terms


def _select_memories(
    model: Any, frame_idx: int, output_dict: dict[str, Any], track_in_reverse: bool
) -> tuple[list[tuple[int, dict[str, Any]]], dict[int, Any], dict[int, Any]]:
    """The (t_pos, entry) memories a frame reads, as ``_prepare_memory_conditioned_features``."""
    cond_outputs = output_dict["cond_frame_outputs"]
    selected, unselected = select_closest_cond_frames(frame_idx, cond_outputs, model.max_cond_frames_in_attn)
    chosen = [(0, out) for out in selected.values()]
    stride = 1 if model.training else model.memory_temporal_stride_for_eval
    for t_pos in range(1, model.num_maskmem):
        t_rel = model.num_maskmem - t_pos
        if t_rel == 1:
            prev = frame_idx + t_rel if track_in_reverse else frame_idx - t_rel
        elif not track_in_reverse:
            prev = ((frame_idx - 2) // stride) * stride - (t_rel - 2) * stride
        else:
            prev = -(-(frame_idx + 2) // stride) * stride + (t_rel - 2) * stride
        out = output_dict["non_cond_frame_outputs"].get(prev, unselected.get(prev))
        if out is not None:
            chosen.append((t_pos, out))
    return chosen, selected, unselected


def _object_pointers(
    model: Any,
    frame_idx: int,
    output_dict: dict[str, Any],
    selected: dict[int, Any],
    unselected: dict[int, Any],
    *,
    num_frames: int,
    track_in_reverse: bool,
    batch: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Object-pointer tokens and their position encodings (N, B, mem_dim), as the stock code."""
    if not model.use_obj_ptrs_in_encoder:
        return None
    max_ptrs = min(num_frames, model.max_obj_ptrs_in_encoder)
    if not model.training and model.only_obj_ptrs_in_the_past_for_eval:
        ptr_cond = {t: out for t, out in selected.items() if (t >= frame_idx if track_in_reverse else t <= frame_idx)}
    else:
        ptr_cond = selected
    sign = -1 if track_in_reverse else 1
    pos_and_ptrs = [
        ((frame_idx - t) * sign if model.use_signed_tpos_enc_to_obj_ptrs else abs(frame_idx - t), out["obj_ptr"])
        for t, out in ptr_cond.items()
    ]
    for t_diff in range(1, max_ptrs):
        t = frame_idx + t_diff if track_in_reverse else frame_idx - t_diff
        if t < 0 or (num_frames is not None and t >= num_frames):
            break
        out = output_dict["non_cond_frame_outputs"].get(t, unselected.get(t, None))
        if out is not None:
            pos_and_ptrs.append((t_diff, out["obj_ptr"]))
    if not pos_and_ptrs:
        return None
    pos_list, ptr_list = zip(*pos_and_ptrs)
    ptrs = torch.stack(ptr_list, dim=0)
    channels = model.hidden_dim
    if model.add_tpos_enc_to_obj_ptrs:
        tpos_dim = channels if model.proj_tpos_enc_in_obj_ptrs else model.mem_dim
        obj_pos = torch.tensor(pos_list).to(device=device, non_blocking=True)
        obj_pos = model.obj_ptr_tpos_proj(get_1d_sine_pe(obj_pos / (max_ptrs - 1), dim=tpos_dim))
        obj_pos = obj_pos.unsqueeze(1).expand(-1, batch, model.mem_dim)
    else:
        obj_pos = ptrs.new_zeros(len(pos_list), batch, model.mem_dim)
    if model.mem_dim < channels:
        ptrs = ptrs.reshape(-1, batch, channels // model.mem_dim, model.mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
        obj_pos = obj_pos.repeat_interleave(channels // model.mem_dim, dim=0)
    return ptrs, obj_pos


#: Rows per memory-attention call (self- and cross-attention) on CUDA with cuDNN attention first, or
#: None for one call with the ambient kernels. cuDNN builds an execution plan per attention shape; a fixed number of rows per
#: call (the last call padded) leaves only the key length to vary, and that depends only on the
#: distance from the keyframe (up to ``max_obj_ptrs_in_encoder`` values), so every plan is built in
#: the first video and reused after.
CUDNN_ROWS_PER_CALL: int | None = 4
#: Device types where the chunked cuDNN path runs (elsewhere: one call, the ambient kernels).
CUDNN_DEVICE_TYPES: tuple[str, ...] = ("cuda",)


def _padded_rows(rows: int, device: torch.device) -> int:
    chunk = CUDNN_ROWS_PER_CALL
    if chunk is None or device.type not in CUDNN_DEVICE_TYPES:
        return rows
    return -(-rows // chunk) * chunk


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    return x if x.shape[0] == rows else torch.cat([x, x.new_zeros(rows - x.shape[0], *x.shape[1:])])


def _attend(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, rows: int) -> torch.Tensor:
    """Attention of the first ``rows`` rows: one call with the ambient kernels, or (on
    ``CUDNN_DEVICE_TYPES``) calls of ``CUDNN_ROWS_PER_CALL`` rows with cuDNN first, inputs padded
    with rows that are dropped after (keys and values may come padded already, ``_concat_rows``)."""
    chunk = CUDNN_ROWS_PER_CALL
    if chunk is None or queries.device.type not in CUDNN_DEVICE_TYPES:
        return F.scaled_dot_product_attention(queries, keys, values)
    padded = _padded_rows(rows, queries.device)
    queries, keys, values = (_pad_rows(x, padded) for x in (queries, keys, values))
    backends = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    with sdpa_kernel(backends, set_priority=True):
        out = [
            F.scaled_dot_product_attention(queries[i : i + chunk], keys[i : i + chunk], values[i : i + chunk])
            for i in range(0, padded, chunk)
        ]
    return torch.cat(out)[:rows]


def _concat_rows(parts: list[torch.Tensor], rows: int, padded: int) -> torch.Tensor:
    """``torch.cat(parts, dim=2)`` into a buffer of ``padded`` rows (rows past ``rows`` unset)."""
    if padded == rows:
        return torch.cat(parts, dim=2)
    first = parts[0]
    out = first.new_empty(padded, first.shape[1], sum(p.shape[2] for p in parts), first.shape[3])
    torch.cat(parts, dim=2, out=out[:rows])
    return out


#: ``torch.compile`` the memory attention's per-layer work between its attention calls (norms,
#: projections, RoPE, residuals, MLP), on CUDA only: inductor fuses the elementwise kernels that
#: dominate a tracking step besides attention. Off by default (compilation costs start-up time).
COMPILE_LAYER_WORK: bool = False
_COMPILED: dict[str, Any] = {}


def _rope_real(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """:func:`_rotate`'s complex product as real arithmetic, which inductor can fuse; ``freqs`` (N, C/2, 2) =
    (cos, sin)."""
    cos, sin = freqs[..., 0], freqs[..., 1]
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2).type_as(x)


def _self_attention_inputs(layer: Any, tgt: torch.Tensor, query_pos: torch.Tensor, rope: Any,
                           freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values of ``MemoryAttentionLayer._forward_sa`` (RoPE self-attention)."""
    attn = layer.self_attn
    tgt2 = layer.norm1(tgt)
    q = k = tgt2 + query_pos if layer.pos_enc_at_attn else tgt2
    q = rope(attn._separate_heads(attn.q_proj(q), attn.num_heads), freqs)
    k = rope(attn._separate_heads(attn.k_proj(k), attn.num_heads), freqs)
    return q, k, attn._separate_heads(attn.v_proj(tgt2), attn.num_heads)


def _self_output_cross_queries(layer: Any, tgt: torch.Tensor, out: torch.Tensor, query_pos: torch.Tensor,
                               rope: Any, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rest of ``_forward_sa``, then ``_forward_ca``'s rotated queries (its keys and values come projected)."""
    tgt = tgt + layer.dropout1(layer.self_attn.out_proj(layer.self_attn._recombine_heads(out)))
    attn = layer.cross_attn_image
    tgt2 = layer.norm2(tgt)
    queries = attn.q_proj(tgt2 + query_pos if layer.pos_enc_at_cross_attn_queries else tgt2)
    return tgt, rope(attn._separate_heads(queries, attn.num_heads), freqs)


def _cross_output_mlp(layer: Any, tgt: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The rest of ``_forward_ca``, then the layer's MLP."""
    attn = layer.cross_attn_image
    tgt = tgt + layer.dropout2(attn.out_proj(attn._recombine_heads(out)))
    hidden = layer.norm3(tgt)
    return tgt + layer.dropout3(layer.linear2(layer.dropout(layer.activation(layer.linear1(hidden)))))


def _compiled(fn: Any) -> Any:
    compiled = _COMPILED.get(fn.__name__)
    if compiled is None:
        compiled = _COMPILED[fn.__name__] = torch.compile(fn, dynamic=True)
    return compiled


def _memory_attention_layer(layer: Any, output: torch.Tensor, query_pos: torch.Tensor, keys: torch.Tensor,
                            values: torch.Tensor, rows: int) -> torch.Tensor:
    """One ``MemoryAttentionLayer`` with keys and values already projected and rotated, attention through
    :func:`_attend`; the work between the attention calls compiled where :data:`COMPILE_LAYER_WORK` says."""
    num_tokens, device = output.shape[1], output.device
    sa_freqs = _rope_freqs(layer.self_attn, num_tokens, device)
    ca_freqs = _rope_freqs(layer.cross_attn_image, num_tokens, device)
    if COMPILE_LAYER_WORK and device.type in CUDNN_DEVICE_TYPES:
        rope, stage = _rope_real, _compiled
        sa_freqs, ca_freqs = torch.view_as_real(sa_freqs), torch.view_as_real(ca_freqs)
    else:
        rope, stage = _rotate, (lambda fn: fn)
    q, k, v = stage(_self_attention_inputs)(layer, output, query_pos, rope, sa_freqs)
    output, queries = stage(_self_output_cross_queries)(layer, output, _attend(q, k, v, rows), query_pos, rope,
                                                         ca_freqs)
    return stage(_cross_output_mlp)(layer, output, _attend(queries, keys, values, rows))


def condition_on_projected_memory(
    model: Any,
    *,
    frame_idx: int,
    current_vision_feats: list[torch.Tensor],
    current_vision_pos_embeds: list[torch.Tensor],
    feat_sizes: list[tuple[int, int]],
    output_dict: dict[str, Any],
    num_frames: int,
    track_in_reverse: bool = False,
) -> torch.Tensor:
    """``_prepare_memory_conditioned_features`` of a non-initial frame with cached projections.

    Returns the memory-conditioned features (B, C, H, W), equal to the stock method's.
    """
    curr, curr_pos = current_vision_feats[-1], current_vision_pos_embeds[-1]
    batch, channels = curr.size(1), model.hidden_dim
    height, width = feat_sizes[-1]
    device = curr.device
    memories, selected, unselected = _select_memories(model, frame_idx, output_dict, track_in_reverse)
    if not memories:
        raise RuntimeError(f"frame {frame_idx}: no memory to condition on (no conditioning frame in the bank)")
    pointers = _object_pointers(
        model, frame_idx, output_dict, selected, unselected,
        num_frames=num_frames, track_in_reverse=track_in_reverse, batch=batch, device=device,
    )
    num_tokens = height * width
    tpos_keys = _temporal_keys(model, output_dict, num_tokens, device)
    projected = [(t_pos, _project_entry(model, entry, device)) for t_pos, entry in memories]

    attention = model.memory_attention
    output = curr
    if attention.pos_enc_at_input:
        output = output + 0.1 * curr_pos
    output, query_pos = output.transpose(0, 1), curr_pos.transpose(0, 1)
    if pointers is not None:
        ptrs, ptr_pos = pointers[0].transpose(0, 1), pointers[1].transpose(0, 1)
    for index, layer in enumerate(attention.layers):
        attn = layer.cross_attn_image
        keys = [
            entry[index][0][:batch] + tpos_keys[index][model.num_maskmem - t_pos - 1]
            for t_pos, entry in projected
        ]
        values = [entry[index][1][:batch] for _, entry in projected]
        if pointers is not None:
            keys.append(attn._separate_heads(attn.k_proj(ptrs + ptr_pos), attn.num_heads))
            values.append(attn._separate_heads(attn.v_proj(ptrs), attn.num_heads))
        padded = _padded_rows(batch, device)
        keys, values = _concat_rows(keys, batch, padded), _concat_rows(values, batch, padded)
        output = _memory_attention_layer(layer, output, query_pos, keys, values, batch)
    output = attention.norm(output)
    return output.permute(0, 2, 1).reshape(batch, channels, height, width)
