"""Binary masks <-> compressed COCO RLE (pycocotools), vectorised over frames.

The masks table stores one compressed RLE ``counts`` string per (video, expression, frame) with the
frame size in ``height``/``width`` (``schemas.MASKS_SCHEMA``). pycocotools encodes and decodes a
whole ``(H, W, N)`` Fortran-ordered stack in one C call, so a video's ``T`` frames cost one call
each way instead of ``T`` Python round trips.

Example:
    >>> import numpy as np
    >>> masks = np.zeros((2, 4, 5), dtype=bool)
    >>> masks[0, 1:3, 1:4] = True
    >>> counts = encode_masks(masks)
    >>> len(counts), type(counts[0]).__name__
    (2, 'bytes')
    >>> bool((decode_masks(counts, height=4, width=5) == masks).all())
    True
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils

__all__ = ["encode_masks", "decode_masks", "mask_areas"]


def encode_masks(masks: np.ndarray) -> list[bytes]:
    """Encode a ``(T, H, W)`` stack of binary masks as ``T`` compressed COCO RLE ``counts``.

    Args:
        masks: bool (or 0/1 integer) array of shape ``(T, H, W)``; ``T`` may be 0.

    Returns:
        One ``bytes`` per frame, in frame order (decode with :func:`decode_masks`).

    Raises:
        ValueError: when ``masks`` is not 3-D or has an empty spatial size.
        TypeError: when ``masks`` is not boolean or integer.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"encode_masks expects masks of shape (T, H, W), got shape {masks.shape}")
    if masks.dtype != bool and not np.issubdtype(masks.dtype, np.integer):
        raise TypeError(f"encode_masks expects bool or integer masks, got dtype {masks.dtype}")
    num_frames, height, width = masks.shape
    if height == 0 or width == 0:
        raise ValueError(f"encode_masks got an empty frame size {height}x{width}")
    if num_frames == 0:
        return []
    # pycocotools wants (H, W, N) uint8 in Fortran order; the transpose of a C-ordered (T, H, W)
    # array is already Fortran-ordered, so this is a cast, not a copy of the layout.
    stack = np.asfortranarray((masks != 0).astype(np.uint8).transpose(1, 2, 0))
    return [rle["counts"] for rle in mask_utils.encode(stack)]


def decode_masks(counts: Sequence[bytes | str], *, height: int, width: int) -> np.ndarray:
    """Decode compressed COCO RLE ``counts`` of frames of size ``height x width``.

    Args:
        counts: one compressed RLE string per frame (bytes, or str as in COCO JSON).
        height: frame height of every RLE.
        width: frame width of every RLE.

    Returns:
        bool array of shape ``(len(counts), height, width)``.

    Raises:
        ValueError: when the size is not positive or an RLE does not match the size.
    """
    if int(height) <= 0 or int(width) <= 0:
        raise ValueError(f"decode_masks needs a positive frame size, got {height}x{width}")
    if len(counts) == 0:
        return np.zeros((0, int(height), int(width)), dtype=bool)
    rles = [
        {"size": [int(height), int(width)], "counts": c.encode() if isinstance(c, str) else bytes(c)}
        for c in counts
    ]
    try:
        decoded = mask_utils.decode(rles)  # (H, W, N) uint8
    except ValueError as exc:  # pycocotools: "Invalid RLE mask representation"
        raise ValueError(
            f"cannot decode {len(rles)} RLE frame(s) as {height}x{width} masks: {exc} "
            "(corrupt counts, or the RLE was encoded for another frame size)"
        ) from exc
    return np.ascontiguousarray(decoded.transpose(2, 0, 1)).astype(bool)


def mask_areas(counts: Sequence[bytes | str], *, height: int, width: int) -> np.ndarray:
    """Foreground pixel counts of RLE frames without decoding them (int64, shape ``(N,)``)."""
    if not len(counts):
        return np.zeros((0,), dtype=np.int64)
    rles = [
        {"size": [int(height), int(width)], "counts": c.encode() if isinstance(c, str) else bytes(c)}
        for c in counts
    ]
    return np.asarray(mask_utils.area(rles), dtype=np.int64)
