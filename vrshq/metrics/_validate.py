"""Input checks shared by the metrics: bool (T, H, W) numpy masks of one shape."""
from __future__ import annotations

import numpy as np

__all__ = ["check_masks"]


def check_masks(**masks: np.ndarray) -> tuple[int, int, int]:
    """Check that every keyword argument is a bool numpy array (T, H, W) and that all shapes agree.

    Masks must be ``bool`` on purpose: the official ReVOS script mixes 0/255 predictions with 0/1
    ground truth and gets accuracy and robustness wrong (method §9 item 13). Requiring bool
    makes the caller binarise once, explicitly.

    Args:
        **masks: name -> array, e.g. ``check_masks(gt=gt, pred=pred)``; names appear in errors.

    Returns:
        The common shape ``(T, H, W)``.

    Raises:
        TypeError: an argument is not a numpy array, or its dtype is not bool.
        ValueError: an argument is not 3-D, or two shapes differ (both shapes are named).
    """
    shape: tuple[int, int, int] | None = None
    first = ""
    for name, mask in masks.items():
        if not isinstance(mask, np.ndarray):
            raise TypeError(
                f"{name} must be a numpy bool array of shape (T, H, W), got {type(mask).__name__}; "
                "convert a torch tensor with `.cpu().numpy()`"
            )
        if mask.dtype != np.bool_:
            raise TypeError(
                f"{name} must have dtype bool, got {mask.dtype}; binarise it explicitly, "
                f"e.g. `{name} > 0` for 0/1 or 0/255 masks"
            )
        if mask.ndim != 3:
            raise ValueError(
                f"{name} must be 3-D (T, H, W), got shape {mask.shape}; add a frame axis with `{name}[None]`"
            )
        if shape is None:
            shape, first = mask.shape, name
        elif mask.shape != shape:
            raise ValueError(f"shape mismatch: {first} has shape {shape} but {name} has shape {mask.shape}")
    if shape is None:
        raise TypeError("check_masks needs at least one mask")
    return shape
