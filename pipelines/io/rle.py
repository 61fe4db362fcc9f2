"""Binary masks <-> compressed COCO RLE, vectorised over frames and computable on the model's device.

The masks table stores one compressed RLE ``counts`` string per (video, expression, frame) with the
frame size in ``height``/``width`` (``schemas.MASKS_SCHEMA``).

Encoding is the hot path of the inference actor (one 720p mask per frame per expression), so it
does not go through pycocotools one mask at a time: :func:`encode_masks` takes a ``(T, H, W)``
stack as a numpy array *or a torch tensor on any device* and

1. finds the run boundaries of every frame in column-major order (COCO's layout) with one
   ``nonzero`` over the whole stack, on the tensor's device;
2. turns them into run lengths and then into the characters of COCO's compressed string format
   (pycocotools ``maskApi.c: rleToString``: each count, from the fourth on as a delta to the count
   two before it, is written as little-endian groups of 5 bits, ``0x20`` flags a following group,
   ``48`` is added to each char) with whole-stack tensor arithmetic;
3. copies only those characters (a few bytes per frame) to the host and slices them per frame.

That path serves tensors on an accelerator. Host masks (numpy, CPU tensors) go through
pycocotools' C encoder in one call for the stack, which on a CPU is faster than the tensor ops.

The result is byte-identical to ``pycocotools.mask.encode`` (tested against it on random masks).
Decoding goes through pycocotools (one C call for a whole stack).

Example:
    >>> import numpy as np
    >>> masks = np.zeros((2, 4, 5), dtype=bool)
    >>> masks[0, 1:3, 1:4] = True
    >>> counts = encode_masks(masks)
    >>> counts[0], counts[1]
    (b'5220003', b'd0')
    >>> bool((decode_masks(counts, height=4, width=5) == masks).all())
    True
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils

__all__ = ["decode_masks", "encode_masks", "mask_areas", "rle_run_lengths", "rle_counts_to_strings"]



def _as_mask_tensor(masks: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(masks, np.ndarray):
        if masks.dtype != bool and not np.issubdtype(masks.dtype, np.integer):
            raise TypeError(f"encode_masks expects bool or integer masks, got dtype {masks.dtype}")
        masks = torch.from_numpy(np.ascontiguousarray(masks))
    elif not isinstance(masks, torch.Tensor):
        raise TypeError(f"encode_masks expects a numpy array or a torch tensor, got {type(masks).__name__}")
    elif masks.dtype.is_floating_point or masks.dtype.is_complex:
        raise TypeError(f"encode_masks expects bool or integer masks, got dtype {masks.dtype}")
    if masks.dim() != 3:
        raise ValueError(f"encode_masks expects masks of shape (T, H, W), got shape {tuple(masks.shape)}")
    if masks.shape[1] == 0 or masks.shape[2] == 0:
        raise ValueError(f"encode_masks got an empty frame size {masks.shape[1]}x{masks.shape[2]}")
    return masks if masks.dtype == torch.bool else masks != 0


def rle_run_lengths(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Uncompressed COCO run lengths of a bool ``(N, H, W)`` stack, on the stack's device.

    Runs alternate zeros/ones in column-major order and start with zeros (a leading 0 when a frame
    starts with a one), as ``pycocotools`` ``rleEncode``.

    Returns:
        ``(counts, num_runs)``: int64 run lengths of all frames concatenated, and int64 ``(N,)``
        runs per frame (``counts`` splits into frames at ``num_runs.cumsum()``).
    """
    n, h, w = masks.shape
    device = masks.device
    flat = masks.transpose(1, 2).reshape(n, h * w)  # column-major per frame, as COCO
    rows, cols = (flat[:, 1:] != flat[:, :-1]).nonzero(as_tuple=True)  # rows ascending, cols within
    first = flat[:, 0].long()
    changes = torch.bincount(rows, minlength=n)
    num_runs = changes + 1 + first  # one run after each change, the first run, a leading empty one
    starts = torch.cumsum(num_runs, 0) - num_runs
    # Run ends per frame: [0 if first] + change positions + [H*W]; counts = ends - previous end.
    ends = torch.full((int(num_runs.sum()),), h * w, dtype=torch.long, device=device)
    rank = torch.arange(rows.numel(), device=device) - (torch.cumsum(changes, 0) - changes)[rows]
    ends[starts[rows] + first[rows] + rank] = cols + 1
    ends[starts] = torch.where(first.bool(), 0, ends[starts])  # a leading empty run of zeros
    prev = torch.roll(ends, 1)
    prev[starts] = 0
    return ends - prev, num_runs


def rle_counts_to_strings(counts: torch.Tensor, num_runs: torch.Tensor, *, num_pixels: int) -> list[bytes]:
    """COCO compressed strings (pycocotools ``rleToString``) of per-frame run lengths.

    Args:
        counts: int64 run lengths of all frames concatenated (any device).
        num_runs: int64 ``(N,)`` runs per frame.
        num_pixels: ``H * W``; bounds every count (and so every delta), hence the groups per count.

    Returns:
        ``N`` compressed ``counts`` strings; only their characters leave the device.
    """
    device = counts.device
    n = num_runs.numel()
    if n == 0:
        return []
    starts = torch.cumsum(num_runs, 0) - num_runs
    total = counts.numel()  # output sizes given below: no device->host sync for them
    frame_of_run = torch.repeat_interleave(torch.arange(n, device=device), num_runs, output_size=total)
    index = torch.arange(total, device=device) - starts[frame_of_run]
    # rleToString: "if(i>2) x-=(long) cnts[i-2]" (the index within the frame)
    delta = torch.where(index > 2, counts - torch.roll(counts, 2), counts)
    # |delta| <= H*W, so bit_length(H*W) + 1 signed bits (in groups of 5) hold every delta.
    max_groups = -(-(int(num_pixels).bit_length() + 1) // 5)
    shifts = 5 * torch.arange(max_groups, device=device)
    groups = (delta[:, None] >> shifts) & 0x1F  # little-endian 5-bit groups (arithmetic shift)
    # Groups written: the fewest k with delta in [-2^(5k-1), 2^(5k-1)), i.e. fits k*5 signed bits.
    limit = torch.ones_like(shifts) << (shifts + 4)  # 2^(5k-1) for k = 1..max_groups
    num_groups = 1 + ((delta[:, None] < -limit[:-1]) | (delta[:, None] >= limit[:-1])).sum(1)
    position = torch.arange(max_groups, device=device)[None, :]
    chars = groups + 48 + 32 * (position < num_groups[:, None] - 1)
    data = chars[position < num_groups[:, None]].to(torch.uint8).cpu().numpy().tobytes()
    per_frame = torch.zeros(n, dtype=torch.long, device=device).index_add_(0, frame_of_run, num_groups)
    bounds = np.concatenate([[0], np.cumsum(per_frame.cpu().numpy())])
    return [data[bounds[i] : bounds[i + 1]] for i in range(n)]


def encode_masks(masks: np.ndarray | torch.Tensor) -> list[bytes]:
    """Encode a ``(T, H, W)`` stack of binary masks as ``T`` compressed COCO RLE ``counts``.

    Args:
        masks: bool (or 0/1 integer) numpy array or torch tensor of shape ``(T, H, W)``; ``T`` may
            be 0. A tensor is encoded on its device (a CUDA tensor never comes to the host whole).

    Returns:
        One ``bytes`` per frame, in frame order, equal to ``pycocotools.mask.encode``'s
        (decode with :func:`decode_masks`).

    Raises:
        ValueError: when ``masks`` is not 3-D or has an empty spatial size.
        TypeError: when ``masks`` is not boolean or integer.
    """
    stack = _as_mask_tensor(masks)
    if stack.shape[0] == 0:
        return []
    if stack.device.type == "cpu":
        # On the host pycocotools' C loop is faster (~1.4 ms per 720p mask) than whole-stack tensor
        # ops (~3.5 ms); both give the same bytes. pycocotools wants (H, W, N) uint8 in Fortran
        # order: the transpose of a C-ordered (T, H, W) array already is, so this is only a cast.
        array = np.ascontiguousarray(stack.numpy()).view(np.uint8).transpose(1, 2, 0)
        return [rle["counts"] for rle in mask_utils.encode(np.asfortranarray(array))]
    with torch.inference_mode():
        return rle_counts_to_strings(*rle_run_lengths(stack), num_pixels=stack.shape[1] * stack.shape[2])


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
