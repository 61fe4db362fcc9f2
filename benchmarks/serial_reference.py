"""The official evaluation loop, rebuilt from our model's public parts: one expression at a time, no sharing.

What the official ``evaluation_multiseg.py`` does per expression (method §7, §9 item 8), and what
:func:`segment_expression_serial` therefore does, each step for this one expression only:

1. decode the video's frames again (the official dataset decodes them three times: ``decode_passes``);
2. CLIP-336 anchor over **all** frames (``model.anchor``), strided MLLM frames around it (method §1.4);
3. CLIP-224 preprocessing of all frames, visual tokens of the selected ones (``model.vision``, §1.6);
4. one MLLM forward for this expression alone (``model.mllm``), the SEG/TAK head, TDA (§2, §3);
5. the SAM2 input of every frame (letterbox, §1.5); for **each** TKS candidate a new SAM2 image
   encoding of that frame and a decode of TAK' on it (the official builds a new state per candidate,
   §4, §9 item 8), keyframe = argmax of the TKS scores;
6. SAM2 image encoding of all frames again, single-object tracking forward then backward (§5.3)
   with stock SAM2 memory attention (every memory re-projected at every frame it is read);
7. crop the letterbox, resize to the frame size, threshold at 0 (§5.3 step 6).

It calls the same submodules as :meth:`vrshq.model.VrshqModel.segment_video` (same weights), so its
masks must equal the shared path's; ``tests/unit/test_benchmark_serial.py`` checks that, which is
what makes this a faithful un-shared baseline rather than a strawman.

Stage times are accumulated in a :class:`StageTimes` (device-synchronised at stage boundaries, which
the serial path does anyway: every keyframe choice reads a value back to the host).
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from vrshq.model.letterbox import letterbox, unletterbox_logits
from vrshq.model.outputs import SegmentationResult
from vrshq.model.prompts import encode_prompt, inference_prompt, normalize_expression
from vrshq.model.tda import temporal_dynamic_aggregation
from vrshq.model.tks import inference_keyframe

__all__ = ["STAGES", "StageTimes", "segment_expression_serial"]

#: Stage names, in order, as reported by :class:`StageTimes`.
STAGES: tuple[str, ...] = ("decode", "anchor", "clip224", "mllm", "tks", "sam2_encode", "track", "masks")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class StageTimes:
    """Seconds spent per stage, summed over calls (see :data:`STAGES`)."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    @contextlib.contextmanager
    def stage(self, name: str, device: torch.device) -> Iterator[None]:
        if name not in self.seconds:
            raise ValueError(f"unknown stage {name!r}; known: {STAGES}")
        start = time.perf_counter()
        try:
            yield
        finally:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            self.seconds[name] += time.perf_counter() - start

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def _autocast(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """The model's inference precision: bf16 autocast on CUDA (``VrshqConfig.autocast_dtype``), none on CPU."""
    device = model.device
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=_DTYPES[model.cfg.autocast_dtype])
    return contextlib.nullcontext()


def _tks_one_candidate_at_a_time(
    model: torch.nn.Module, images: torch.Tensor, candidates: list[int], fused_tak: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per candidate: encode that frame alone, decode TAK' on it (no reuse between candidates)."""
    scores, high = [], []
    for frame in candidates:
        features = model.sam2.encode_video(images[frame : frame + 1])
        decode = model.sam2.decode_prompts(features, torch.zeros(1, dtype=torch.long), fused_tak)
        scores.append(decode.object_score_logits[0])
        high.append(decode.high_res_logits[0, 0])
    return torch.stack(scores), high


@torch.no_grad()
def segment_expression_serial(
    model: torch.nn.Module,
    load_frames: Callable[[], np.ndarray],
    expression: str,
    *,
    decode_passes: int = 1,
    mask_chunk_size: int = 16,
    output_hw: tuple[int, int] | None = None,
    times: StageTimes | None = None,
) -> SegmentationResult:
    """Segment one expression the way the official evaluation does (see the module docstring).

    Args:
        model: a ``VrshqModel`` (eval mode is set here for the duration of the call).
        load_frames: decodes the video's frames, uint8 ``(T, H, W, 3)``; called ``decode_passes`` times.
        expression: the referring or reasoning expression (normalised as the evaluation does).
        decode_passes: frame decodes per expression (official: 3, method §9 item 8; default 1, which
            favours the baseline).
        mask_chunk_size: frames per chunk when the masks are resized to the frame size.
        output_hw: the masks' size (default: the frames'), as ``segment_video``'s ``output_hw``: the
            logits are resized bilinearly straight to it (frames decoded at a working size).
        times: accumulates the seconds per stage, if given.

    Returns:
        The expression's :class:`SegmentationResult` (bool ``(T, H, W)`` masks, keyframe, TKS scores,
        MLLM frames, per-frame object scores), comparable with ``segment_video``'s.
    """
    if not isinstance(decode_passes, int) or decode_passes < 1:
        raise ValueError(f"decode_passes must be an int >= 1, got {decode_passes!r}")
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise RuntimeError("the model has no tokenizer; build it with one (see benchmarks.presets)")
    text = normalize_expression(expression)
    if not text:
        raise ValueError(f"expression must not be blank, got {expression!r}")
    times = times if times is not None else StageTimes()
    device = model.device
    method = model.cfg.method
    size = model.sam2.image_size
    was_training = model.training
    model.eval()
    # the same attention kernels as segment_video (a fair baseline: same kernels, no sharing)
    attention = model.inference_attention() if hasattr(model, "inference_attention") else contextlib.nullcontext()
    try:
        with _autocast(model), attention:
            with times.stage("decode", device):
                for _ in range(decode_passes):
                    array = load_frames()
                frames = torch.from_numpy(np.ascontiguousarray(array))
            num_frames, height, width = (int(s) for s in frames.shape[:3])
            with times.stage("anchor", device):
                frame_indices = [int(f) for f in model.anchor.select_frames(frames, [text])[0]]
            with times.stage("clip224", device):
                # the official preprocesses all frames for CLIP-224, then encodes only the selected ones
                pixels = model.vision.preprocess(frames)
                visual = model.vision(pixels[frame_indices])
            with times.stage("mllm", device):
                encoded = encode_prompt(tokenizer, inference_prompt(text, len(frame_indices)))
                out = model.mllm(model.mllm.build_inputs([encoded.input_ids], [visual]))
                seg = model.seg_head(out.seg_hidden[0])
                tak = model.seg_head(out.tak_hidden)
                tda = temporal_dynamic_aggregation(seg[None], tak, alpha=method.tda_alpha)
            with times.stage("tks", device):
                boxed = letterbox(frames, image_size=size, device=device)
                object_scores, high = _tks_one_candidate_at_a_time(model, boxed.images, frame_indices, tda.fused_tak)
                position, tks_scores = inference_keyframe(
                    object_scores, tda.weights[0], sam_weight=method.tks_sam_weight, token_weight=method.tks_token_weight
                )
                keyframe = frame_indices[position]
                key_mask = high[position] > 0
                del high
            with times.stage("sam2_encode", device):
                features = model.sam2.encode_video(boxed.images)
            with times.stage("track", device):
                # stock SAM2 memory attention, as the official predictor runs it
                track = model.sam2.track(features, [keyframe], key_mask[None], project_memory_once=False)
                del features
            with times.stage("masks", device):
                out_hw = (height, width) if output_hw is None else (int(output_hw[0]), int(output_hw[1]))
                masks = np.empty((num_frames, *out_hw), dtype=bool)
                for t0 in range(0, num_frames, mask_chunk_size):
                    low = track.low_res_logits[0, t0 : t0 + mask_chunk_size].to(device).float()
                    up = F.interpolate(low[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
                    logits = unletterbox_logits(
                        up, resized_hw=boxed.resized_hw, original_hw=out_hw, image_size=size
                    )
                    masks[t0 : t0 + mask_chunk_size] = (logits > method.mask_threshold).cpu().numpy()
    finally:
        model.train(was_training)
    return SegmentationResult(
        masks=masks,
        keyframe_idx=int(keyframe),
        keyframe_scores=tks_scores.float().cpu().numpy(),
        frame_indices=frame_indices,
        object_scores=track.object_score_logits[0].float().cpu().numpy(),
    )
