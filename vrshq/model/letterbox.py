"""SAM2 input letterbox of VRS-HQ (method §1.5) and its inverse for mask logits.

VRS-HQ does not stretch frames to S×S like the stock SAM2 predictor: the longest side is
resized to S keeping the aspect ratio, the pixels are normalised (mean/std on the 0-255
scale), and only then is the image zero-padded on the right/bottom, so padding is 0 *after*
normalisation. Masks come back by cropping the valid (h', w') region and resizing bilinearly
(align_corners=False) to the original (H, W) (method §5.3 step 6, §9 item 18). The released
decoder weights were trained on this layout, so keep it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "Letterboxed",
    "SAM2_PIXEL_MEAN",
    "SAM2_PIXEL_STD",
    "letterbox",
    "letterbox_shape",
    "unletterbox_logits",
]

# Method §1.5: normalisation on the 0-255 scale (RVD/RVE ``preprocess``).
SAM2_PIXEL_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
SAM2_PIXEL_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)


@dataclasses.dataclass(frozen=True)
class Letterboxed:
    """Letterboxed frames.

    Attributes:
        images: (T, 3, S, S) float32, normalised, zero-padded right/bottom.
        resized_hw: (h', w') valid region after the longest-side resize.
        original_hw: (H, W) of the input frames.
    """

    images: torch.Tensor
    resized_hw: tuple[int, int]
    original_hw: tuple[int, int]


def letterbox_shape(height: int, width: int, image_size: int) -> tuple[int, int]:
    """(h', w') after resizing the longest side to ``image_size``.

    Same rounding as SAM's ``ResizeLongestSide.get_preprocess_shape`` (``int(x + 0.5)``).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"letterbox: frame size must be positive, got {(height, width)}")
    scale = image_size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def letterbox(
    frames: torch.Tensor | np.ndarray,
    *,
    image_size: int,
    device: torch.device | str | None = None,
) -> Letterboxed:
    """Resize the longest side to ``image_size``, normalise, then zero-pad to a square.

    The resize is bilinear with antialiasing and rounded back to uint8 values, as the
    official PIL resize of the uint8 frame is (method §1.5).

    Args:
        frames: (T, H, W, 3) uint8 RGB frames (numpy or torch, any device).
        image_size: Square side S of the SAM2 input.
        device: Where to compute and return ``images`` (default: the frames' device).

    Returns:
        :class:`Letterboxed` with ``images`` (T, 3, S, S) float32.
    """
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(frames)
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"letterbox: frames must be a tensor or ndarray, got {type(frames).__name__}")
    if frames.dim() != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(
            f"letterbox: frames must be uint8 (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}"
        )
    if not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"letterbox: image_size must be a positive int, got {image_size!r}")
    height, width = int(frames.shape[1]), int(frames.shape[2])
    new_h, new_w = letterbox_shape(height, width, image_size)
    x = frames.to(device) if device is not None else frames
    x = x.permute(0, 3, 1, 2).float()
    if (new_h, new_w) != (height, width):
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
        x = x.round_().clamp_(0.0, 255.0)
    mean = torch.tensor(SAM2_PIXEL_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(SAM2_PIXEL_STD, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    x = F.pad(x, (0, image_size - new_w, 0, image_size - new_h), value=0.0)
    return Letterboxed(images=x.contiguous(), resized_hw=(new_h, new_w), original_hw=(height, width))


def unletterbox_logits(
    logits: torch.Tensor,
    *,
    resized_hw: tuple[int, int],
    original_hw: tuple[int, int],
    image_size: int,
) -> torch.Tensor:
    """Crop the valid region of square logits and resize them to the original frame size.

    Args:
        logits: (..., S', S') logits of the letterboxed S×S input; S' may differ from S
            (e.g. SAM2's S/4 low-res logits): the crop is then ``round(h'·S'/S)`` ×
            ``round(w'·S'/S)``.
        resized_hw: (h', w') from :class:`Letterboxed`.
        original_hw: (H, W) to resize to.
        image_size: S.

    Returns:
        (..., H, W) float logits (bilinear, align_corners=False), same device.
    """
    if logits.dim() < 2 or logits.shape[-1] != logits.shape[-2]:
        raise ValueError(f"unletterbox_logits: expected (..., S', S'), got {tuple(logits.shape)}")
    side = logits.shape[-1]
    crop_h = max(1, min(side, round(resized_hw[0] * side / image_size)))
    crop_w = max(1, min(side, round(resized_hw[1] * side / image_size)))
    lead = logits.shape[:-2]
    x = logits[..., :crop_h, :crop_w].reshape(-1, 1, crop_h, crop_w).float()
    if (crop_h, crop_w) != tuple(original_hw):
        x = F.interpolate(x, size=tuple(original_hw), mode="bilinear", align_corners=False)
    return x.reshape(*lead, *original_hw)
