"""Floating-point operations of one ``VrshqModel.segment_video`` call, counted from the model's shapes.

The roofline of the inference benchmark: the matrix work each stage must do (matrix products,
convolutions and attention; 2 FLOPs per multiply-add, as ``torch.utils.flop_counter`` counts them),
read from the modules themselves (their ``Linear``/``Conv2d`` weights, Hiera's windows and query
pooling, SAM2's memory settings, the LLaMA and CLIP configs) and from what the call did (frames,
the MLLM frames and keyframe of every expression, prompt lengths). Elementwise work (norms,
activations, RoPE, softmax) is not counted: it is small next to the matrix work and runs far below
the matrix units' peak anyway.

Counted as the model executes it:

* SAM2 image encoder (Hiera trunk with its padded attention windows, FPN neck, the decoder's
  high-resolution 1x1 convolutions) once per frame;
* TKS: one SAM2 mask decode per candidate frame of every expression;
* tracking: the keyframe insertion (mask as output, decoder for the object pointer, memory encoder)
  and, per tracked mask, the memory attention (self-attention over the frame's tokens,
  cross-attention to the keyframe, up to ``num_maskmem - 1`` recent memories and the object
  pointers), the mask decoder and the memory encoder. With ``projected=True`` each memory frame's
  keys and values are projected once (``vrshq.model.projected_memory``), as lockstep tracking runs;
  ``projected=False`` counts the stock SAM2 path, which projects them at every frame that reads them;
* MLLM prefill: every LLaMA layer over the padded prompt batch (attention over the full square, as
  the math kernel computes it); CLIP-224 over the distinct MLLM frames; CLIP-336 image tower over all
  frames and its text tower over the expressions.

``tests/unit/test_flops.py`` checks every part against ``torch.utils.flop_counter.FlopCounterMode``
on the real modules of the tiny preset.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DENSE_BF16_PEAK_TFLOPS",
    "StageFlops",
    "clip_text_flops",
    "clip_vision_flops",
    "dense_bf16_peak_tflops",
    "hiera_flops",
    "llama_prefill_flops",
    "mask_decoder_flops",
    "memory_attention_flops",
    "memory_encoder_flops",
    "sam2_image_flops",
    "segment_video_flops",
    "tracking_flops",
]

#: Dense (no sparsity) bf16 tensor-core peak in TFLOP/s by device-name fragment, from NVIDIA's
#: datasheets: H100 SXM5 989.4 (the "1,979 with sparsity" row halved), H100 PCIe 756.5, H100 NVL
#: 835.5; H200 SXM 989.4 (the H200 datasheet's "1,979 with sparsity"; same chip and clocks as H100
#: SXM); A100 312. Matched in order, first fragment contained in the name wins.
DENSE_BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.4),
    ("H100 PCIe", 756.5),
    ("H100 NVL", 835.5),
    ("H100", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
)


def dense_bf16_peak_tflops(device_name: str) -> float | None:
    """The card's dense bf16 peak (TFLOP/s) from :data:`DENSE_BF16_PEAK_TFLOPS`, None if unknown."""
    for fragment, peak in DENSE_BF16_PEAK_TFLOPS:
        if fragment.lower() in device_name.lower():
            return peak
    return None


@dataclass
class StageFlops:
    """FLOPs per stage of ``segment_video`` (keys: ``clip_anchor``, ``clip_tokens``, ``mllm``,
    ``sam2_encode``, ``tks``, ``track``); ``masks`` = tracked + inserted masks."""

    flops: dict[str, int] = field(default_factory=dict)
    masks: int = 0

    @property
    def total(self) -> int:
        return sum(self.flops.values())

    def add(self, other: StageFlops) -> None:
        for name, value in other.flops.items():
            self.flops[name] = self.flops.get(name, 0) + value
        self.masks += other.masks


# ----------------------------------------------------------------------------------- primitives


def _linear(layer: Any, tokens: int) -> int:
    """``nn.Linear`` on ``tokens`` rows."""
    return 2 * tokens * int(layer.in_features) * int(layer.out_features)


def _mlp(mlp: Any, tokens: int) -> int:
    """sam2's ``MLP`` (a ``layers`` list of ``nn.Linear``) on ``tokens`` rows."""
    return sum(_linear(layer, tokens) for layer in mlp.layers)


def _conv(conv: Any, out_hw: tuple[int, int], batch: int = 1) -> int:
    """``nn.Conv2d`` producing ``out_hw`` maps: 2 x outputs x (C_in / groups) x kernel area."""
    return 2 * batch * out_hw[0] * out_hw[1] * math.prod(conv.weight.shape)


def _conv_out(conv: Any, hw: tuple[int, int]) -> tuple[int, int]:
    k, s, p = conv.kernel_size, conv.stride, conv.padding
    return tuple((hw[i] + 2 * p[i] - k[i]) // s[i] + 1 for i in range(2))


def _conv_transpose(conv: Any, in_hw: tuple[int, int], batch: int = 1) -> int:
    """``nn.ConvTranspose2d`` on ``in_hw`` inputs: 2 x inputs x C_out x kernel area."""
    return 2 * batch * in_hw[0] * in_hw[1] * math.prod(conv.weight.shape)


def _attention(batch: int, queries: int, keys: int, width_qk: int, width_v: int | None = None) -> int:
    """Scaled dot-product attention over all heads: Q K^T and P V (``width`` = heads x head size)."""
    return 2 * batch * queries * keys * (width_qk + (width_qk if width_v is None else width_v))


def _sam_attention(attn: Any, batch: int, queries: int, keys: int) -> int:
    """sam2's ``Attention``/``RoPEAttention`` with all four projections (keys from ``keys`` tokens)."""
    width = int(attn.internal_dim)
    return (_linear(attn.q_proj, batch * queries) + _linear(attn.k_proj, batch * keys)
            + _linear(attn.v_proj, batch * keys) + _linear(attn.out_proj, batch * queries)
            + _attention(batch, queries, keys, width))


# ---------------------------------------------------------------------------------------- SAM2


def hiera_flops(trunk: Any, image_size: int) -> tuple[int, list[tuple[int, int, int]]]:
    """Hiera trunk on one ``image_size`` square image: FLOPs and the (H, W, C) of each stage output.

    Windowed blocks pad the token grid to whole windows (``window_partition``), and the padded
    tokens go through the qkv projection and attention; a query-pooling block pools the queries of
    each window by its stride.
    """
    conv = trunk.patch_embed.proj
    h, w = _conv_out(conv, (image_size, image_size))
    flops = _conv(conv, (h, w))
    stages = []
    for index, block in enumerate(trunk.blocks):
        if block.dim != block.dim_out:
            flops += _linear(block.proj, h * w)
        window = int(block.window_size)
        if window > 0:
            grid_h, grid_w = -(-h // window), -(-w // window)
            windows, keys = grid_h * grid_w, window * window
        else:
            windows, keys = 1, h * w
        flops += _linear(block.attn.qkv, windows * keys)
        if block.q_stride:
            sh, sw = block.q_stride
            queries = (window // sh) * (window // sw) if window > 0 else (h // sh) * (w // sw)
            h, w = h // sh, w // sw
        else:
            queries = keys
        flops += _attention(windows, queries, keys, int(block.dim_out))
        flops += _linear(block.attn.proj, windows * queries)
        flops += _mlp(block.mlp, h * w)
        if index in trunk.stage_ends:
            stages.append((h, w, int(block.dim_out)))
    return flops, stages


def sam2_image_flops(sam2: Any) -> int:
    """SAM2 ``forward_image`` of one frame: trunk, FPN neck and the decoder's high-res convolutions."""
    size = int(sam2.image_size)
    encoder = sam2.image_encoder
    flops, stages = hiera_flops(encoder.trunk, size)
    neck = encoder.neck
    last = len(neck.convs) - 1
    for j, conv in enumerate(neck.convs):  # the neck applies convs[n - i] to trunk output i
        h, w, _ = stages[last - j]
        layer = conv.conv
        flops += _conv(layer, _conv_out(layer, (h, w)))
    if sam2.use_high_res_features_in_sam:
        decoder = sam2.sam_mask_decoder
        for conv, (h, w, _) in ((decoder.conv_s0, stages[0]), (decoder.conv_s1, stages[1])):
            flops += _conv(conv, _conv_out(conv, (h, w)))
    return flops


def _prompt_flops(sam2: Any, batch: int, points: int, *, mask_input: bool, calls: int = 1) -> int:
    """Prompt encoder: Fourier features of the points and (once per call) of the dense grid, mask downscaling."""
    encoder = sam2.sam_prompt_encoder
    gaussian = encoder.pe_layer.positional_encoding_gaussian_matrix
    h, w = encoder.image_embedding_size
    pe = 2 * math.prod(gaussian.shape)  # (N, 2) @ (2, C/2) per position
    flops = pe * (batch * points + calls * h * w)
    if mask_input:
        hw = tuple(encoder.mask_input_size)
        for layer in encoder.mask_downscaling:
            if hasattr(layer, "kernel_size") and hasattr(layer, "weight") and layer.weight.dim() == 4:
                hw = _conv_out(layer, hw)
                flops += _conv(layer, hw, batch)
    return flops


def mask_decoder_flops(sam2: Any, batch: int, *, sparse_tokens: int = 2, mask_input: bool = False,
                       calls: int = 1) -> int:
    """SAM2 heads (prompt encoder, mask decoder, object pointer) for ``batch`` prompts in ``calls`` calls.

    ``sparse_tokens`` is what the prompt encoder gives: tracking steps and the mask insertion pass
    no point, which sam2 turns into a dummy point plus a padding point (2 tokens, both through the
    Fourier features); TKS adds its [TAK] prompt to those (3 tokens).
    """
    decoder = sam2.sam_mask_decoder
    h, w = sam2.sam_prompt_encoder.image_embedding_size
    image = h * w
    tokens = int(decoder.num_mask_tokens) + 1 + int(bool(decoder.pred_obj_scores)) + sparse_tokens
    flops = _prompt_flops(sam2, batch, 2, mask_input=mask_input, calls=calls) + _object_pointer_flops(sam2, batch)
    transformer = decoder.transformer
    for layer in transformer.layers:
        flops += _sam_attention(layer.self_attn, batch, tokens, tokens)
        flops += _sam_attention(layer.cross_attn_token_to_image, batch, tokens, image)
        flops += _mlp(layer.mlp, batch * tokens)
        flops += _sam_attention(layer.cross_attn_image_to_token, batch, image, tokens)
    flops += _sam_attention(transformer.final_attn_token_to_image, batch, tokens, image)
    upscaling = [m for m in decoder.output_upscaling if type(m).__name__ == "ConvTranspose2d"]
    hw = (h, w)
    for conv in upscaling:
        flops += _conv_transpose(conv, hw, batch)
        hw = (hw[0] * conv.stride[0], hw[1] * conv.stride[1])
    hyper_width = int(decoder.output_hypernetworks_mlps[0].layers[-1].out_features)
    flops += sum(_mlp(mlp, batch) for mlp in decoder.output_hypernetworks_mlps)
    flops += 2 * batch * int(decoder.num_mask_tokens) * hyper_width * hw[0] * hw[1]
    flops += _mlp(decoder.iou_prediction_head, batch)
    if decoder.pred_obj_scores:
        head = decoder.pred_obj_score_head
        flops += _mlp(head, batch) if hasattr(head, "layers") else _linear(head, batch)
    return flops


def _object_pointer_flops(sam2: Any, batch: int) -> int:
    proj = sam2.obj_ptr_proj
    return _mlp(proj, batch) if hasattr(proj, "layers") else _linear(proj, batch)


def memory_encoder_flops(sam2: Any, batch: int) -> int:
    """SAM2 memory encoder of ``batch`` masks: mask downsampler, feature projection, fuser, output."""
    encoder = sam2.memory_encoder
    size = int(sam2.image_size)
    hw = (size, size)
    flops = 0
    for layer in encoder.mask_downsampler.encoder:
        if type(layer).__name__ == "Conv2d":
            hw = _conv_out(layer, hw)
            flops += _conv(layer, hw, batch)
    flops += _conv(encoder.pix_feat_proj, hw, batch)
    fuser = encoder.fuser
    if getattr(fuser, "proj", None) is not None and type(fuser.proj).__name__ == "Conv2d":
        flops += _conv(fuser.proj, hw, batch)
    for block in fuser.layers:
        flops += _conv(block.dwconv, hw, batch)
        flops += _linear(block.pwconv1, batch * hw[0] * hw[1]) + _linear(block.pwconv2, batch * hw[0] * hw[1])
    if type(encoder.out_proj).__name__ == "Conv2d":
        flops += _conv(encoder.out_proj, hw, batch)
    return flops


def memory_attention_flops(sam2: Any, batch: int, *, memories: int, pointers: int, projected: bool) -> int:
    """SAM2 memory attention of ``batch`` rows reading ``memories`` memory frames and ``pointers``
    object pointers. With ``projected`` the memories' keys and values are not projected here (they
    were once, when stored: :func:`tracking_flops` counts that); pointers always are."""
    h, w = sam2.sam_prompt_encoder.image_embedding_size
    queries = h * w
    split = max(1, int(sam2.hidden_dim) // int(sam2.mem_dim))  # a pointer is split into mem_dim tokens
    pointer_tokens = pointers * split if sam2.mem_dim < sam2.hidden_dim else pointers
    keys = memories * queries + pointer_tokens
    flops = 0
    for layer in sam2.memory_attention.layers:
        flops += _sam_attention(layer.self_attn, batch, queries, queries)
        cross = layer.cross_attn_image
        width = int(cross.internal_dim)
        projected_keys = pointer_tokens if projected else keys
        flops += (_linear(cross.q_proj, batch * queries) + _linear(cross.out_proj, batch * queries)
                  + _linear(cross.k_proj, batch * projected_keys) + _linear(cross.v_proj, batch * projected_keys)
                  + _attention(batch, queries, keys, width))
        flops += _linear(layer.linear1, batch * queries) + _linear(layer.linear2, batch * queries)
    return flops


def _memory_projection_flops(sam2: Any, frames: int) -> int:
    """Keys and values of ``frames`` memory frames projected once (``projected_memory``)."""
    h, w = sam2.sam_prompt_encoder.image_embedding_size
    tokens = frames * h * w
    return sum(_linear(layer.cross_attn_image.k_proj, tokens) + _linear(layer.cross_attn_image.v_proj, tokens)
               for layer in sam2.memory_attention.layers)


def _memories_at(sam2: Any, distance: int, num_frames: int) -> tuple[int, int]:
    """(memory frames, object pointers) a lockstep step ``distance`` frames from its keyframe reads
    (memory stride 1, one conditioning frame: see ``vrshq.model.sam2_lockstep``)."""
    recent = min(distance - 1, int(sam2.num_maskmem) - 1)
    pointers = 0
    if sam2.use_obj_ptrs_in_encoder:
        max_ptrs = min(num_frames, int(sam2.max_obj_ptrs_in_encoder))
        pointers = 1 + min(distance - 1, max_ptrs - 1)
    return 1 + recent, pointers


def tracking_flops(sam2: Any, num_frames: int, keyframes: Sequence[int], *, projected: bool = True) -> int:
    """Lockstep tracking of objects with these keyframes through ``num_frames`` frames."""
    objects = len(keyframes)
    flops = _conv(sam2.mask_downsample, _conv_out(sam2.mask_downsample, (sam2.image_size,) * 2), objects)
    flops += mask_decoder_flops(sam2, objects, mask_input=True) + memory_encoder_flops(sam2, objects)
    if projected:  # the temporal encodings' keys, once per call
        tpos = int(sam2.num_maskmem)
        flops += sum(_linear(layer.cross_attn_image.k_proj, tpos) for layer in sam2.memory_attention.layers)
    lengths = [num_frames - 1 - k for k in keyframes] + [k for k in keyframes]
    for distance in range(1, max(lengths, default=0) + 1):
        rows = sum(1 for length in lengths if length >= distance)
        if rows == 0:
            continue
        memories, pointers = _memories_at(sam2, distance, num_frames)
        flops += memory_attention_flops(sam2, rows, memories=memories, pointers=pointers, projected=projected)
        flops += mask_decoder_flops(sam2, rows)
        flops += memory_encoder_flops(sam2, rows)
        if projected:  # the memory read for the first time: the conditioning frame at step 1, then the
            # previous step's output, with the rows still active (entries no step reads are never projected)
            flops += _memory_projection_flops(sam2, rows)
    return flops


# ---------------------------------------------------------------------------------- CLIP, LLaMA


def _clip_layers(config: Any, batch: int, tokens: int, layers: int | None = None) -> int:
    hidden, inner = int(config.hidden_size), int(config.intermediate_size)
    per_token = 2 * (4 * hidden * hidden + 2 * hidden * inner)
    count = int(config.num_hidden_layers) if layers is None else layers
    return count * (batch * tokens * per_token + _attention(batch, tokens, tokens, hidden))


def clip_vision_flops(config: Any, images: int, *, projection_dim: int | None = None) -> int:
    """A transformers CLIP vision tower (``CLIPVisionConfig``) on ``images`` images: patch
    convolution, every layer over the patches plus CLS, and the optional visual projection."""
    grid = int(config.image_size) // int(config.patch_size)
    patches = grid * grid
    flops = 2 * images * patches * int(config.hidden_size) * int(config.num_channels) * int(config.patch_size) ** 2
    flops += _clip_layers(config, images, patches + 1)
    if projection_dim:
        flops += 2 * images * int(config.hidden_size) * projection_dim
    return flops


def clip_text_flops(config: Any, texts: int, length: int, *, projection_dim: int | None = None) -> int:
    """A transformers CLIP text tower on ``texts`` texts padded to ``length`` tokens (+ projection)."""
    flops = _clip_layers(config, texts, length)
    if projection_dim:
        flops += 2 * texts * int(config.hidden_size) * projection_dim
    return flops


def llama_prefill_flops(config: Any, batch: int, length: int) -> int:
    """A transformers LLaMA decoder (no LM head) over a ``batch`` x ``length`` padded prefill: the
    projections, the gated MLP, attention over the full square and the RoPE angle product."""
    hidden, inner = int(config.hidden_size), int(config.intermediate_size)
    heads, kv_heads = int(config.num_attention_heads), int(config.num_key_value_heads)
    head = hidden // heads
    per_token = 2 * (hidden * heads * head + 2 * hidden * kv_heads * head + heads * head * hidden + 3 * hidden * inner)
    tokens = batch * length
    return int(config.num_hidden_layers) * (tokens * per_token + _attention(batch, length, length, heads * head))


# --------------------------------------------------------------------------------- one video

_TKS_CHUNK = 64  # prompts per decoder call of ``Sam2Segmenter.decode_prompts`` (its default)


def _prompt_lengths(model: Any, texts: Sequence[str], frame_counts: Sequence[int]) -> list[int]:
    from vrshq.model.mllm import expanded_layout
    from vrshq.model.prompts import inference_prompt, normalize_expression

    encoded = [model.encode_prompt(inference_prompt(normalize_expression(t), n)) for t, n in zip(texts, frame_counts)]
    ids = model.mllm.token_ids
    layout = expanded_layout([list(map(int, e.input_ids)) for e in encoded],
                             tokens_per_frame=model.mllm.tokens_per_frame, seg_id=ids.seg_token_id, tak_id=ids.tak_token_id)
    return [int(n) for n in layout.lengths]


def segment_video_flops(
    model: Any,
    *,
    num_frames: int,
    texts: Sequence[str],
    frame_sets: Sequence[Sequence[int]],
    keyframes: Sequence[int],
    projected: bool = True,
    llm_batch_size: int | None = None,
) -> StageFlops:
    """FLOPs of ``model.segment_video(frames, texts)`` by stage, given what that call decided.

    Args:
        model: the ``VrshqModel``.
        num_frames: frames of the video.
        texts: the expressions.
        frame_sets: MLLM frames of each expression (``SegmentationResult.frame_indices``).
        keyframes: keyframe of each expression (``SegmentationResult.keyframe_idx``).
        projected: memory keys and values projected once (lockstep tracking) or at every read (stock).
        llm_batch_size: prompts per MLLM forward (None: all at once), as passed to ``segment_video``.
    """
    from vrshq.model.clip_preprocess import tokenize_texts

    out = StageFlops()
    anchor = model.anchor
    clip = anchor.clip_model.config
    projection = int(getattr(clip, "projection_dim", 0)) or None
    input_ids, _ = tokenize_texts(anchor.tokenizer, list(texts), max_length=anchor.max_text_length, device="cpu")
    out.flops["clip_anchor"] = (clip_vision_flops(clip.vision_config, num_frames, projection_dim=projection)
                                + clip_text_flops(clip.text_config, len(texts), int(input_ids.shape[1]),
                                                  projection_dim=projection)
                                + 2 * len(texts) * num_frames * (projection or 0))
    tokenizer = model.vision
    union = len(set().union(*map(set, frame_sets)))
    tower = tokenizer.vision_tower.config
    out.flops["clip_tokens"] = (clip_vision_flops(tower, union)
                                + _linear_like(tokenizer.projector, union * model.mllm.tokens_per_frame))
    lengths = _prompt_lengths(model, texts, [len(s) for s in frame_sets])
    step = llm_batch_size or len(lengths)
    llm_config = model.mllm.llm.config
    seg_head = sum(_linear(m, 1) // 2 for m in model.seg_head.modules() if type(m).__name__ == "Linear")
    mllm = 0
    for start in range(0, len(lengths), step):
        part = lengths[start : start + step]
        mllm += llama_prefill_flops(llm_config, len(part), max(part))
    seg_tokens = sum(len(s) for s in frame_sets) + len(texts)  # [SEG] per frame + one [TAK]
    out.flops["mllm"] = mllm + 2 * seg_tokens * seg_head
    sam2 = model.sam2.sam2
    out.flops["sam2_encode"] = num_frames * sam2_image_flops(sam2)
    candidates = sum(len(s) for s in frame_sets)
    out.flops["tks"] = mask_decoder_flops(sam2, candidates, sparse_tokens=3, calls=-(-candidates // _TKS_CHUNK))
    out.flops["track"] = tracking_flops(sam2, num_frames, keyframes, projected=projected)
    out.masks = num_frames * len(texts)
    return out


def _linear_like(module: Any, tokens: int) -> int:
    """Every ``nn.Linear`` inside ``module`` (a projector: Linear or a Sequential of them) on ``tokens`` rows."""
    return sum(_linear(m, tokens) for m in module.modules() if type(m).__name__ == "Linear")


def format_roofline(stage_flops: Mapping[str, int], stage_seconds: Mapping[str, float], *, peak_tflops: float | None
                    ) -> str:
    """One line per stage: TFLOP, seconds, share of the time, achieved TFLOP/s and % of the dense bf16 peak."""
    lines = [f"{'stage':<14} | {'TFLOP':>9} | {'seconds':>8} | {'% time':>6} | {'TFLOP/s':>8} | {'% peak':>6}"]
    names = list(dict.fromkeys([*stage_flops, *stage_seconds]))
    total_flops = sum(stage_flops.values())
    total_seconds = sum(stage_seconds.values())
    rows = [*((n, stage_flops.get(n, 0), stage_seconds.get(n, 0.0)) for n in names), ("total", total_flops, total_seconds)]
    for name, flops, seconds in rows:
        known = flops > 0 and seconds > 0
        rate = flops / seconds / 1e12 if known else float("nan")
        rate_text = f"{rate:8.1f}" if known else f"{'-':>8}"
        share = f"{100 * rate / peak_tflops:6.1f}" if known and peak_tflops else f"{'-':>6}"
        time_share = 100 * seconds / total_seconds if total_seconds > 0 else float("nan")
        lines.append(f"{name:<14} | {flops / 1e12:9.3f} | {seconds:8.2f} | {time_share:6.1f} | {rate_text} | {share}")
    return "\n".join(lines)
