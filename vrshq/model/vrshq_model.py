"""`VrshqModel`: the assembled VRS-HQ model with one entry point per mode.

* `segment_video(frames, expressions)` - inference on one video with many expressions, sharing all
  per-video work (method §1.4-§5.3; the official code redoes it per expression, §9 item 8):
  CLIP-336 anchor scores of the frames once for all expressions; CLIP-224 visual tokens once for the
  union of the frames the expressions sample; one MLLM batch; SAM2 image features once; every TKS
  candidate of every expression in one `decode_prompts` call; all expressions tracked together.
* `forward(batch)` - training (method §4 training, §5.4, §6): teacher-forced MLLM with labels, TDA,
  keyframe = argmax of the TDA weights, the 3-frame SAM2 window around it, losses at GT resolution.

Module tree (parameter-name prefixes): `vision` (VisualTokenizer: `vision.vision_tower.*`,
`vision.projector.*`), `anchor` (AnchorFrameSampler: `anchor.clip_model.*`), `mllm` (`mllm.llm.model.*`,
`mllm.llm.lm_head.*`), `seg_head` (`seg_head.mlp.{0,2}.*`), `sam2` (Sam2Segmenter: `sam2.sam2.*`).

Device and precision come from where the parameters are: float32 on CPU, bf16 autocast on CUDA
(`VrshqConfig.autocast_dtype`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from vrshq.config import VrshqConfig
from vrshq.model.lazy_masks import LazyMasks
from vrshq.model.letterbox import letterbox, letterbox_shape, unletterbox_logits
from vrshq.model.losses import combine_losses, mask_losses, object_presence_loss
from vrshq.model.mllm import VrshqMLLM, ragged_positions
from vrshq.model.outputs import SegmentationResult, TrainBatch, VrshqOutput
from vrshq.model.prompts import EncodedPrompt, VideoPrompt, encode_prompt, inference_prompt, normalize_expression
from vrshq.model.seg_head import SegHead
from vrshq.model.tda import TdaResult, temporal_dynamic_aggregation
from vrshq.model.tks import TrainWindow, tks_scores, train_keyframe, train_window

__all__ = ["CPU_VISUAL_CHUNK_FRAMES", "PROMPT_CACHE_SIZE", "VISUAL_CHUNK_VALUES", "VrshqModel", "eval_mode"]

VISUAL_CHUNK_VALUES = 32 * 257 * 1024
"""Values of one tower hidden state per call of :meth:`VrshqModel.encode_visual`: 32 frames of CLIP ViT-L/14 at
224 (257 tokens of 1024)."""
CPU_VISUAL_CHUNK_FRAMES = 256
"""Most frames a tower call takes on a CPU. Measured (2 cores, learnability tower, 1,288 frames): 0.24 s in calls
of 32 frames, 0.19 s of 256, 0.34 s in one call."""
PROMPT_CACHE_SIZE = 65536
"""Encoded prompts a model keeps (:meth:`VrshqModel.encode_prompt`)."""

_SDPA_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class _TextForward:
    """What the text path of training computes (:meth:`VrshqModel._text_forward`)."""

    owners: list[tuple[int, int]]
    seg: list[torch.Tensor]
    tak: torch.Tensor
    ce: torch.Tensor | None
    seg_pad: torch.Tensor
    frame_mask: torch.Tensor
    tda: TdaResult
    is_image: list[bool]
    fused_tak: torch.Tensor


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode inside the block, back in its previous mode after it."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _as_frames(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    is_frames = isinstance(frames, torch.Tensor) and frames.dtype == torch.uint8 and frames.dim() == 4
    if not is_frames or frames.shape[-1] != 3:
        raise ValueError(
            f"frames must be uint8 RGB (T, H, W, 3), got {getattr(frames, 'dtype', type(frames).__name__)} "
            f"{tuple(getattr(frames, 'shape', ()))}"
        )
    if frames.shape[0] < 1:
        raise ValueError("frames must hold at least one frame")
    return frames


class VrshqModel(nn.Module):
    """VRS-HQ built from its submodules (see `vrshq.builders.build_vrshq`).

    Args:
        cfg: the config the parts were built from (method constants, loss weights, autocast dtype).
        vision: `VisualTokenizer` (CLIP-224 tower, DPC-KNN merge, projector).
        anchor: `AnchorFrameSampler` (CLIP-336 anchor + strided sampling); only used by `segment_video`.
        mllm: `VrshqMLLM` (LLaMA with `[SEG]`/`[TAK]`).
        seg_head: `SegHead` (hidden size -> SAM2 prompt size).
        sam2: `Sam2Segmenter`.
        tokenizer: the LLM tokenizer with `[SEG]`/`[TAK]`; None only for models that are never run
            (e.g. built on the meta device).
    """

    def __init__(
        self,
        *,
        cfg: VrshqConfig,
        vision: nn.Module,
        anchor: nn.Module,
        mllm: VrshqMLLM,
        seg_head: SegHead,
        sam2: nn.Module,
        tokenizer=None,
    ) -> None:
        super().__init__()
        if not isinstance(cfg, VrshqConfig):
            raise TypeError(f"cfg must be a VrshqConfig, got {type(cfg).__name__}")
        if vision.tokens_per_frame != mllm.tokens_per_frame:
            raise ValueError(
                f"vision gives {vision.tokens_per_frame} tokens per frame but the MLLM expects {mllm.tokens_per_frame}"
            )
        out_dim = seg_head.mlp[2].out_features
        if out_dim != sam2.prompt_embed_dim:
            raise ValueError(
                f"seg head output {out_dim} != SAM2 prompt dimension {sam2.prompt_embed_dim}; set "
                "MethodConfig.seg_embed_dim to the SAM2 prompt size (256 for Hiera-L, d_model for sam2_tiny)"
            )
        self.cfg = cfg
        self.vision = vision
        self.anchor = anchor
        self.mllm = mllm
        self.seg_head = seg_head
        self.sam2 = sam2
        self.tokenizer = tokenizer
        self._prompt_cache_owner = None  # the tokenizer whose encodings _prompt_cache holds (encode_prompt)
        self._prompt_cache: dict[VideoPrompt, EncodedPrompt] = {}

    #: Scaled-dot-product-attention kernels that inference (`segment_video`) may use, in PyTorch's
    #: order of preference; None leaves the choice to PyTorch. cuDNN attention is left out: it
    #: builds an execution plan for every new attention shape (tens of milliseconds each, measured
    #: on an H200 as seconds per video), and inference meets new shapes in every video (tracked
    #: rows per step, memory length, MLLM prompt lengths). SAM2's memory attention, the largest
    #: attention of inference, runs cuDNN anyway, in calls of a fixed number of rows whose few
    #: shapes repeat in every video (``vrshq.model.projected_memory``). Set on an instance to compare.
    inference_sdpa_backends: tuple[str, ...] | None = ("flash", "efficient", "math")

    #: Optional :class:`vrshq.model.stage_timer.StageTimer` that times each stage of `segment_video`
    #: (clip_anchor, clip_tokens, mllm, sam2_encode, tks, track); None: no timing (benchmarks set it).
    stage_timer = None

    def _stage(self, name: str) -> contextlib.AbstractContextManager:
        """A named profiler range for stage ``name`` of `segment_video`, timed when `stage_timer` is set."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.profiler.record_function(f"vrshq.{name}"))
        if self.stage_timer is not None:
            stack.enter_context(self.stage_timer.stage(name))
        return stack
    #: The training keyframe rule: None is the method's (argmax of the TDA weights, method §4). An experiment
    #: may set ``fn(weights, target_areas) -> keyframes`` on an instance (both (B, n): TDA weights and the
    #: ground-truth target pixels per frame; e.g. ``vrshq.model.tks.largest_target_keyframe``). Not part of the
    #: config: it changes how a model is trained, never what a checkpoint computes.
    train_keyframe_rule: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def inference_attention(self) -> contextlib.AbstractContextManager:
        """The attention-kernel context of inference (see `inference_sdpa_backends`)."""
        names = self.inference_sdpa_backends
        if names is None:
            return contextlib.nullcontext()
        unknown = sorted(set(names) - set(_SDPA_BACKENDS))
        if unknown or not names:
            raise ValueError(f"inference_sdpa_backends={names!r}: use a non-empty subset of {sorted(_SDPA_BACKENDS)}")
        return sdpa_kernel([_SDPA_BACKENDS[n] for n in names])

    # ---------------------------------------------------------------------------------------- helpers
    @property
    def device(self) -> torch.device:
        """Device of the LLM weights (all parts live on one device)."""
        return self.mllm.llm.get_input_embeddings().weight.device

    def _autocast(self) -> contextlib.AbstractContextManager:
        device = self.device
        if device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=_DTYPES[self.cfg.autocast_dtype])
        return contextlib.nullcontext()

    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise RuntimeError(
                "this VrshqModel has no tokenizer; build it with a tokenizer (LlmConfig.tokenizer_path or "
                "tokenizer='tiny')"
            )
        return self.tokenizer

    def encode_visual(self, frames: torch.Tensor, *, chunk_size: int | None = None) -> torch.Tensor:
        """CLIP-224 visual tokens of frames: uint8 (N, H, W, 3) -> (N, tokens_per_frame, hidden).

        ``chunk_size`` frames go through the tower per call; None bounds a call by the size of a hidden state
        instead (:meth:`visual_chunk_frames`)."""
        chunk_size = chunk_size or self.visual_chunk_frames()
        chunks = [
            self.vision(self.vision.preprocess(frames[start : start + chunk_size]))
            for start in range(0, frames.shape[0], chunk_size)
        ]
        return torch.cat(chunks, dim=0)

    def visual_chunk_frames(self) -> int:
        """Frames per tower call: as many as keep one hidden state within :data:`VISUAL_CHUNK_VALUES` (32 frames of
        CLIP-L, thousands of the learnability tower's 64-patch frames). Why not a fixed frame count: 32 frames a
        call split a stage-G batch of 1,280 tiny-tower frames into 40 calls of ~100 small kernels each, 0.4 s of
        host time a step on an H200 where the GPU work was milliseconds. On a CPU there are no launches to save and
        a call stops at :data:`CPU_VISUAL_CHUNK_FRAMES` frames, where the CPU's caches do best."""
        cfg = self.vision.cfg
        per_frame = ((cfg.image_size // cfg.patch_size) ** 2 + 1) * cfg.hidden_size
        frames = max(1, VISUAL_CHUNK_VALUES // per_frame)
        if next(self.vision.parameters()).device.type == "cpu":
            frames = min(frames, CPU_VISUAL_CHUNK_FRAMES)
        return frames

    def encode_prompt(self, prompt: VideoPrompt) -> EncodedPrompt:
        """:func:`encode_prompt` with this model's tokenizer, through a cache.

        Why: training asks for the same prompts again and again (templates x expressions x frame counts), and
        tokenising 384 of them was ~0.5 s of a stage-G step's host time on an H200 (more than the GPU's work).
        A new tokenizer object starts a new cache; the cache is emptied when it reaches
        :data:`PROMPT_CACHE_SIZE` entries.
        """
        tokenizer = self._require_tokenizer()
        if self._prompt_cache_owner is not tokenizer:
            self._prompt_cache_owner, self._prompt_cache = tokenizer, {}
        encoded = self._prompt_cache.get(prompt)
        if encoded is None:
            if len(self._prompt_cache) >= PROMPT_CACHE_SIZE:
                self._prompt_cache.clear()
            encoded = self._prompt_cache[prompt] = encode_prompt(tokenizer, prompt)
        return encoded

    def _encode_visual_clips(self, clips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Visual tokens of several clips: frames of one size go through the tower together (fewer,
        larger calls; the tower works frame by frame, so the tokens are those of one call per clip)."""
        out: list[torch.Tensor | None] = [None] * len(clips)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, frames in enumerate(clips):
            groups.setdefault(tuple(frames.shape[1:]), []).append(i)
        for idx in groups.values():
            tokens = self.encode_visual(torch.cat([clips[i] for i in idx]) if len(idx) > 1 else clips[idx[0]])
            for i, part in zip(idx, tokens.split([int(clips[i].shape[0]) for i in idx])):
                out[i] = part
        return out

    def _embed_tokens(
        self,
        encoded: Sequence[EncodedPrompt],
        visual: Sequence[torch.Tensor],
        *,
        with_labels: bool,
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """MLLM + seg head: per prompt (n_i, D) SEG embeddings, (B, D) TAK embeddings, CE or None.

        The seg head runs once over every SEG state of the batch: per prompt it was ~20 kernels forward and
        backward each, 768 prompts in a stage-G step."""
        inputs = self.mllm.build_inputs(
            [e.input_ids for e in encoded], visual, [e.labels for e in encoded] if with_labels else None
        )
        out = self.mllm(inputs)
        seg = list(self.seg_head(out.seg_hidden_flat).split(out.seg_counts))
        tak = self.seg_head(out.tak_hidden)
        return seg, tak, out.ce_loss

    def _tda(self, seg: Sequence[torch.Tensor], tak: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, TdaResult]:
        """Pad the per-prompt SEG embeddings to (B, n, D) and run TDA with a frame mask.

        The padding is one scatter of the concatenated rows (``pad_sequence`` copies prompt by prompt, and its
        backward slices prompt by prompt)."""
        counts = np.array([s.shape[0] for s in seg], dtype=np.int64)
        rows, cols = ragged_positions(counts)
        flat = torch.cat(list(seg)).to(tak.dtype)
        seg_pad = flat.new_zeros(counts.size, int(counts.max()), flat.shape[-1]).index_put(  # zero padding
            (torch.from_numpy(rows).to(tak.device), torch.from_numpy(cols).to(tak.device)), flat)
        lengths = torch.from_numpy(counts).to(tak.device)
        mask = torch.arange(seg_pad.shape[1], device=tak.device)[None, :] < lengths[:, None]
        result = temporal_dynamic_aggregation(seg_pad, tak, alpha=self.cfg.method.tda_alpha, frame_mask=mask)
        return seg_pad, mask, result

    def _offload_device(self, num_frames: int) -> torch.device | None:
        """CPU when the SAM2 config offloads this video's features (long videos), else the compute device (None)."""
        return torch.device("cpu") if self.sam2.cfg.offloads_features(num_frames) else None

    # -------------------------------------------------------------------------------------- inference
    @torch.no_grad()
    def segment_video(
        self,
        frames: torch.Tensor | np.ndarray,
        expressions: Sequence[str],
        *,
        llm_batch_size: int | None = None,
        mask_chunk_size: int = 16,
        output_hw: tuple[int, int] | None = None,
        masks_on_device: bool = False,
    ) -> list[SegmentationResult]:
        """Segment every expression in one video (method §1.4-§5.3), sharing all per-video work.

        Args:
            frames: uint8 RGB (T, H, W, 3) of the whole video (CPU is fine; parts are moved in chunks).
            expressions: E referring or reasoning expressions (lower-cased and whitespace-collapsed here,
                as the evaluation does).
            llm_batch_size: expressions per MLLM forward (None: all in one batch). Results do not depend
                on it.
            mask_chunk_size: frames per chunk when masks are resized back to (H, W) (the default chunk
                of `SegmentationResult.iter_mask_chunks`).
            output_hw: the size of the masks (default: the frames' size). A pipeline that runs the model
                on downscaled frames passes the original video size here, so the logits are resized
                bilinearly straight to it and thresholded there (method §5.3 step 6), instead of
                thresholding at the working size and upsampling the binary masks.
            masks_on_device: return the masks as bool tensors on the compute device (no host copy: the
                caller encodes them there, e.g. ``pipelines.io.rle.encode_masks``) instead of numpy arrays.

        Returns:
            One `SegmentationResult` per expression, in order: (T, H, W) bool masks (logits > 0 after
            cropping the letterbox and resizing to `output_hw`), the keyframe, the TKS scores of
            the candidates, the MLLM frames and per-frame object scores. The masks are computed
            lazily from the propagated S/4 logits (`iter_mask_chunks` streams them one chunk at a
            time; `.masks` builds the whole stack), so memory stays bounded for long videos.

        Raises:
            ValueError: bad frames, expressions or `output_hw`.
        """
        self._require_tokenizer()  # before any work: a model built without one cannot run
        frames = _as_frames(frames)
        output_hw = self._check_output_hw(output_hw, frames)
        if isinstance(expressions, str) or not expressions:
            raise ValueError("expressions must be a non-empty list of strings")
        texts = [normalize_expression(e) for e in expressions]
        if any(not t for t in texts):
            raise ValueError(f"expressions must not be empty or blank, got {list(expressions)!r}")
        stage = self._stage  # named ranges in profiles (no cost without a profiler), timed with a stage_timer
        with eval_mode(self), self._autocast(), self.inference_attention():
            # 1-3. per-expression MLLM frames, shared visual tokens, one MLLM batch, TDA (§1.4-§3)
            frame_sets, tda = self._video_tokens(frames, texts, llm_batch_size=llm_batch_size)
            # 4. SAM2 features once; every TKS candidate of every expression in one decode (§4, §5.3)
            # letterboxed and encoded chunk by chunk: the (T, 3, S, S) float video never exists
            with stage("sam2_encode"):
                features = self.sam2.encode_frames(frames)
            with stage("tks"):
                keyframes, key_masks, scores = self._select_keyframes(features, frame_sets, tda)
            # 5. propagate all expressions together from their keyframe masks (§5.3 steps 3-5)
            with stage("track"):
                offload = self._offload_device(int(frames.shape[0]))
                track = self.sam2.track(features, keyframes, key_masks, output_device=offload)
            del features
            # 6. crop the letterbox, resize to output_hw, threshold (§5.3 step 6)
            object_scores = track.object_score_logits.float().cpu().numpy()  # one copy for all expressions
            size = self.sam2.image_size
            resized_hw = letterbox_shape(int(frames.shape[1]), int(frames.shape[2]), size)
            return [
                SegmentationResult(
                    masks=LazyMasks(  # computed per chunk of frames when read, never all at once
                        low_res_logits=track.low_res_logits[e], resized_hw=resized_hw, output_hw=output_hw,
                        image_size=size, threshold=self.cfg.method.mask_threshold, device=self.device,
                        on_device=masks_on_device, chunk_frames=mask_chunk_size,
                    ),
                    keyframe_idx=int(keyframes[e]),
                    keyframe_scores=scores[e],
                    frame_indices=frame_sets[e],
                    object_scores=object_scores[e],
                )
                for e in range(len(texts))
            ]

    @staticmethod
    def _check_output_hw(output_hw: tuple[int, int] | None, frames: torch.Tensor) -> tuple[int, int]:
        if output_hw is None:
            return int(frames.shape[1]), int(frames.shape[2])
        ok = (
            isinstance(output_hw, (tuple, list))
            and len(output_hw) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in output_hw)
        )
        if not ok:
            raise ValueError(f"output_hw must be (height, width) with positive ints, got {output_hw!r}")
        return int(output_hw[0]), int(output_hw[1])

    def _video_tokens(
        self, frames: torch.Tensor, texts: Sequence[str], *, llm_batch_size: int | None
    ) -> tuple[list[list[int]], TdaResult]:
        """MLLM frames per expression and the TDA of their SEG/TAK embeddings (method §1.4-§3).

        CLIP-336 scores the frames once for all expressions; CLIP-224 tokens are computed once for the
        union of the frames the expressions sample; all prompts run as one MLLM batch (or in batches of
        `llm_batch_size`).
        """
        with self._stage("clip_anchor"):
            frame_sets = [list(map(int, fs)) for fs in self.anchor.select_frames(frames, texts)]
        union = sorted(set().union(*frame_sets))
        union_pos = {f: i for i, f in enumerate(union)}
        with self._stage("clip_tokens"):
            visual_union = self.encode_visual(frames[union])
        visual = [visual_union[[union_pos[f] for f in fs]] for fs in frame_sets]
        with self._stage("mllm"):
            encoded = [self.encode_prompt(inference_prompt(t, len(fs))) for t, fs in zip(texts, frame_sets)]
            step = llm_batch_size or len(encoded)
            seg: list[torch.Tensor] = []
            taks = []
            for start in range(0, len(encoded), step):
                s, t, _ = self._embed_tokens(encoded[start : start + step], visual[start : start + step],
                                             with_labels=False)
                seg += s
                taks.append(t)
            _, _, tda = self._tda(seg, torch.cat(taks))
        return frame_sets, tda

    def _select_keyframes(
        self, features, frame_sets: Sequence[Sequence[int]], tda: TdaResult
    ) -> tuple[list[int], torch.Tensor, list[np.ndarray]]:
        """TKS at inference (method §4): decode TAK' on every candidate of every expression in one call.

        Returns:
            The keyframe (video frame index) per expression, the (E, S, S) bool keyframe masks (decode
            logits > 0, method §5.3 step 3) and the candidates' TKS scores per expression.
        """
        method = self.cfg.method
        counts = [len(fs) for fs in frame_sets]
        cand_frames = torch.tensor([f for fs in frame_sets for f in fs], dtype=torch.long)
        cand_prompts = torch.repeat_interleave(  # output_size: no device->host sync for the length
            tda.fused_tak, torch.tensor(counts, device=tda.fused_tak.device), dim=0, output_size=sum(counts)
        )
        decode = self.sam2.decode_prompts(features, cand_frames, cand_prompts)
        # Scores per expression stay on the device (same ops as `inference_keyframe`, so the same
        # values); one padded argmax and one host copy replace a sync per expression.
        scores_dev = []
        offset = 0
        for e, n in enumerate(counts):
            scores_dev.append(
                tks_scores(
                    decode.object_score_logits[offset : offset + n],
                    tda.weights[e, :n],
                    sam_weight=method.tks_sam_weight,
                    token_weight=method.tks_token_weight,
                )
            )
            offset += n
        padded = torch.nn.utils.rnn.pad_sequence(scores_dev, batch_first=True, padding_value=float("-inf"))
        positions = padded.argmax(dim=1)  # first maximum, as `int(scores.argmax())` per expression
        offsets = torch.tensor([0, *np.cumsum(counts)[:-1].tolist()], dtype=torch.long, device=positions.device)
        key_masks = decode.high_res_logits[offsets + positions, 0] > 0
        positions_host, padded_host = positions.cpu().numpy(), padded.float().cpu().numpy()
        keyframes = [int(frame_sets[e][int(positions_host[e])]) for e in range(len(counts))]
        scores_list = [padded_host[e, :n].copy() for e, n in enumerate(counts)]
        return keyframes, key_masks, scores_list

    # --------------------------------------------------------------------------------------- training
    def forward(self, batch: TrainBatch) -> VrshqOutput:
        """Training forward (method §4 training, §5.4, §6).

        Every expression of every clip runs through the MLLM in one batch with its labels (CE);
        TDA fuses its SEG embeddings into TAK'; the keyframe is the argmax of the TDA weights (or what
        ``train_keyframe_rule`` picks from the weights and the target areas); SAM2
        decodes TAK' on the keyframe of a 3-frame window and tracks the two other frames with memory;
        BCE and DICE compare the window logits with the GT masks at the original resolution.
        A 1-frame clip is an image sample (method §3, §5.4): its TAK is used without fusion and SAM2
        decodes it on that frame alone.
        """
        if not isinstance(batch, TrainBatch):
            raise TypeError(f"batch must be a TrainBatch, got {type(batch).__name__}")
        device = self.device
        loss_cfg = self.cfg.loss
        size = self.sam2.image_size
        with self._autocast():
            text = self._text_forward(batch)
            boxes = [letterbox(video.frames, image_size=size, device=device) for video in batch.videos]
            keyframes = self._train_keyframes(batch, text)
            windows = [
                TrainWindow(positions=(0,), cond_pos=0) if image
                else train_window(int(k), text.seg[b].shape[0], window=self.cfg.method.train_window)
                for b, (k, image) in enumerate(zip(keyframes.tolist(), text.is_image))
            ]
            logits_of, scores_of = self._sam2_train_forward(text.owners, windows, text.is_image, boxes, text.fused_tak)
            pred, gt = [], []
            for b, ((v, e), w) in enumerate(zip(text.owners, windows)):
                box = boxes[v]
                pred.append(
                    unletterbox_logits(
                        logits_of[b], resized_hw=box.resized_hw, original_hw=box.original_hw, image_size=size
                    )
                )
                gt.append(batch.videos[v].masks[e, list(w.positions)].to(device))
            bce, dice = mask_losses(pred, gt, dice_scale=loss_cfg.dice_scale, dice_eps=loss_cfg.dice_eps)
            presence = torch.cat([g.flatten(1).any(1) for g in gt])
            obj = object_presence_loss(torch.cat(scores_of), presence)
            terms = combine_losses(
                ce=text.ce,
                bce=bce,
                dice=dice,
                object_presence=obj,
                ce_weight=loss_cfg.ce_weight,
                bce_weight=loss_cfg.bce_weight,
                dice_weight=loss_cfg.dice_weight,
                object_weight=loss_cfg.object_weight,
            )
        return VrshqOutput(
            loss=terms.loss,
            ce_loss=terms.ce_loss,
            bce_loss=terms.bce_loss,
            dice_loss=terms.dice_loss,
            object_loss=terms.object_loss,
            seg_embeds=text.seg_pad,
            frame_mask=text.frame_mask,
            tak_embed=text.tak,
            fused_tak=text.fused_tak,
            keyframe_idx=keyframes,
            keyframe_scores=text.tda.weights,
            mask_logits=tuple(pred),
            window_positions=torch.tensor(
                [w.positions + (-1,) * (self.cfg.method.train_window - len(w.positions)) for w in windows],
                dtype=torch.long,
            ),
        )

    def text_path(self, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The text path of training alone (vision tokens, MLLM with labels, seg head, TDA; no SAM2).

        Returns ``(fused_tak (B, D) float32, ce)`` for every expression of ``batch`` in batch order, exactly as
        :meth:`forward` computes them. Why a public entry: a pretraining stage that supervises TAK' directly
        (``research.grounding_pretrain``) should run the same code as training, without SAM2's cost.
        """
        if not isinstance(batch, TrainBatch):
            raise TypeError(f"batch must be a TrainBatch, got {type(batch).__name__}")
        with self._autocast():
            text = self._text_forward(batch)
        return text.fused_tak, text.ce

    def _text_forward(self, batch: TrainBatch) -> _TextForward:
        """Prompts of every expression through the MLLM (with labels), the seg head and TDA; image samples
        (1-frame clips, method §3/§5.4) keep their TAK unfused."""
        encoded, visual, owners = [], [], []
        visual_of = self._encode_visual_clips([video.frames for video in batch.videos])
        for v, (video, vis) in enumerate(zip(batch.videos, visual_of)):
            for e, prompt in enumerate(video.prompts):
                encoded.append(self.encode_prompt(prompt))
                visual.append(vis)
                owners.append((v, e))
        seg, tak, ce = self._embed_tokens(encoded, visual, with_labels=True)
        seg_pad, frame_mask, tda = self._tda(seg, tak)
        is_image = [s.shape[0] == 1 for s in seg]
        image_rows = torch.tensor(is_image, device=tak.device)
        fused_tak = torch.where(image_rows[:, None], tak.float(), tda.fused_tak)
        return _TextForward(owners, seg, tak, ce, seg_pad, frame_mask, tda, is_image, fused_tak)

    def _train_keyframes(self, batch: TrainBatch, text: _TextForward) -> torch.Tensor:
        """Each expression's training keyframe: the method's rule, or ``train_keyframe_rule`` when one is set."""
        weights = text.tda.weights
        if self.train_keyframe_rule is None:
            return train_keyframe(weights)
        areas = torch.zeros(weights.shape, dtype=torch.float32)
        for b, (v, e) in enumerate(text.owners):
            per_frame = batch.videos[v].masks[e].flatten(1).sum(1).float()
            areas[b, : per_frame.shape[0]] = per_frame[: weights.shape[1]]
        return self.train_keyframe_rule(weights, areas.to(weights.device))

    def _sam2_train_forward(
        self,
        owners: Sequence[tuple[int, int]],
        windows: Sequence[TrainWindow],
        is_image: Sequence[bool],
        boxes: Sequence,
        fused_tak: torch.Tensor,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """SAM2 of a training batch: 3-frame windows of the clips, 1-frame decodes of the images.

        Returns per expression its window logits (w, S, S) and object-score logits (w,), in batch order.
        """
        logits_of: list[torch.Tensor | None] = [None] * len(owners)
        scores_of: list[torch.Tensor | None] = [None] * len(owners)
        for image in (False, True):
            rows = [b for b, flag in enumerate(is_image) if flag == image]
            if not rows:
                continue
            prompts = fused_tak[torch.tensor(rows, device=fused_tak.device)]
            if image:
                images = torch.stack([boxes[owners[b][0]].images[0] for b in rows])
                out = self.sam2.train_image_forward(images, prompts)
            else:
                images = torch.stack([boxes[owners[b][0]].images[list(windows[b].positions)] for b in rows])
                cond_pos = torch.tensor([windows[b].cond_pos for b in rows], dtype=torch.long)
                out = self.sam2.train_window_forward(images, cond_pos, prompts)
            for i, b in enumerate(rows):
                logits_of[b], scores_of[b] = out.logits[i], out.object_score_logits[i]
        return logits_of, scores_of
