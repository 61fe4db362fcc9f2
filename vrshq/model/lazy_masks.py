"""Full-size masks of one expression, computed chunk by chunk from its propagated low-res logits.

Why lazy: the masks of a whole video at the original size are large (a 5,000-frame 720p video is
4.6 GB of bool per expression), while SAM2's propagated logits are (T, S/4, S/4) floats (16 KB per
frame at S = 256, 256 KB at S = 1024). `LazyMasks` keeps only the logits and the recipe of method
§5.3 step 6 (bilinear S/4 -> S, crop the letterbox, bilinear to the output size, threshold), so a
consumer such as the RLE stage of the inference actor holds one chunk of full-size masks at a time.
`LazyMasks.materialize` builds the whole stack from the same chunks for callers who want it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from vrshq.model.letterbox import unletterbox_logits

__all__ = ["LazyMasks", "MaskChunk", "check_chunk_frames"]

#: A chunk of masks: (first frame index, (n, H, W) bool numpy array or torch tensor).
MaskChunk = tuple[int, "np.ndarray | torch.Tensor"]


def check_chunk_frames(chunk_frames: int) -> int:
    """Validate a frames-per-chunk option (a positive int) and return it."""
    if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, (int, np.integer)) or chunk_frames < 1:
        raise ValueError(f"chunk_frames must be a positive int, got {chunk_frames!r}")
    return int(chunk_frames)


@dataclasses.dataclass(frozen=True)
class LazyMasks:
    """(T, H, W) bool masks of one expression, produced on demand from (T, S/4, S/4) logits.

    Attributes:
        low_res_logits: (T, S/4, S/4) propagated mask logits (any device; chunks are moved to
            `device`).
        resized_hw: (h', w') valid region of the letterbox at S (`letterbox_shape`).
        output_hw: (H, W) of the masks.
        image_size: SAM2's input size S.
        threshold: masks are `logits > threshold` (method §5.3 step 6: 0).
        device: where the resize and threshold run (the model's compute device).
        on_device: chunks are bool tensors on `device` (no host copy) instead of numpy arrays.
        chunk_frames: default frames per chunk (bounds the temporary float logits at full size).
    """

    low_res_logits: torch.Tensor
    resized_hw: tuple[int, int]
    output_hw: tuple[int, int]
    image_size: int
    threshold: float
    device: torch.device
    on_device: bool
    chunk_frames: int = 16

    def __post_init__(self) -> None:
        logits = self.low_res_logits
        if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or logits.shape[1] != logits.shape[2]:
            raise ValueError(
                f"LazyMasks.low_res_logits must be a (T, S', S') tensor, got {tuple(getattr(logits, 'shape', ()))}"
            )
        check_chunk_frames(self.chunk_frames)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(T, H, W) of the masks, without computing them."""
        return int(self.low_res_logits.shape[0]), int(self.output_hw[0]), int(self.output_hw[1])

    def iter_chunks(self, chunk_frames: int | None = None) -> Iterator[MaskChunk]:
        """Yield `(start, masks[start : start + n])` in frame order, computing one chunk at a time.

        Per frame: bilinear (align_corners=False) S/4 -> S as SAM2 upsamples its masks, crop the
        letterbox's valid region, bilinear to `output_hw`, threshold (method §5.3 step 6). Each frame
        is resized independently, so the masks do not depend on the chunk size.
        """
        step = self.chunk_frames if chunk_frames is None else check_chunk_frames(chunk_frames)
        size = self.image_size
        with torch.no_grad():
            for start in range(0, self.shape[0], step):
                low = self.low_res_logits[start : start + step].to(self.device).float()
                high = F.interpolate(low[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
                logits = unletterbox_logits(
                    high, resized_hw=self.resized_hw, original_hw=self.output_hw, image_size=size
                )
                chunk = logits > self.threshold
                yield start, chunk if self.on_device else chunk.cpu().numpy()

    def materialize(self, chunk_frames: int | None = None) -> np.ndarray | torch.Tensor:
        """All (T, H, W) masks: a bool tensor on `device` with `on_device`, else a numpy array."""
        if self.on_device:
            masks = torch.empty(self.shape, dtype=torch.bool, device=self.device)
        else:
            masks = np.empty(self.shape, dtype=bool)
        for start, chunk in self.iter_chunks(chunk_frames):
            masks[start : start + chunk.shape[0]] = chunk
        return masks
