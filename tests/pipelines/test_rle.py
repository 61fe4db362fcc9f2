"""COCO RLE round trips and agreement with pycocotools' per-frame API and hand-computed runs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from pipelines.io.rle import decode_masks, encode_masks, mask_areas, rle_counts_to_strings, rle_run_lengths


def test_round_trip_random_masks():
    rng = np.random.default_rng(0)
    masks = rng.random((7, 13, 17)) > 0.6
    counts = encode_masks(masks)
    assert len(counts) == 7 and all(isinstance(c, bytes) for c in counts)
    np.testing.assert_array_equal(decode_masks(counts, height=13, width=17), masks)
    np.testing.assert_array_equal(mask_areas(counts, height=13, width=17), masks.sum(axis=(1, 2)))


def test_matches_single_frame_pycocotools_and_hand_runs():
    # Column-major runs of a 3x2 frame [[0,1],[0,1],[1,1]]: zeros 2, ones 4 -> uncompressed [2, 4].
    frame = np.array([[0, 1], [0, 1], [1, 1]], dtype=bool)
    counts = encode_masks(frame[None])[0]
    expected = mask_utils.frPyObjects({"size": [3, 2], "counts": [2, 4]}, 3, 2)["counts"]
    assert counts == expected
    single = mask_utils.encode(np.asfortranarray(frame.astype(np.uint8)))["counts"]
    assert counts == single


def test_empty_and_full_frames_and_no_frames():
    masks = np.zeros((2, 4, 5), dtype=bool)
    masks[1] = True
    counts = encode_masks(masks)
    np.testing.assert_array_equal(decode_masks(counts, height=4, width=5), masks)
    assert encode_masks(np.zeros((0, 4, 5), dtype=bool)) == []
    assert decode_masks([], height=4, width=5).shape == (0, 4, 5)


def test_str_counts_from_json_decode():
    masks = np.eye(6, dtype=bool)[None]
    counts = [c.decode() for c in encode_masks(masks)]
    np.testing.assert_array_equal(decode_masks(counts, height=6, width=6), masks)


def test_wrong_size_and_bad_inputs_raise():
    counts = encode_masks(np.ones((1, 5, 7), dtype=bool))
    with pytest.raises(ValueError, match="5x6|4x7|cannot decode"):
        decode_masks(counts, height=4, width=7)
    with pytest.raises(ValueError, match=r"\(T, H, W\)"):
        encode_masks(np.zeros((4, 5), dtype=bool))
    with pytest.raises(TypeError, match="dtype"):
        encode_masks(np.zeros((1, 4, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="positive"):
        decode_masks(counts, height=0, width=7)


def _pycocotools_counts(masks: np.ndarray) -> list[bytes]:
    return [r["counts"] for r in mask_utils.encode(np.asfortranarray(masks.astype(np.uint8).transpose(1, 2, 0)))]


def _rle_cases() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    cases = [rng.random((4, 11, 19)) > p for p in (0.02, 0.5, 0.98)]
    cases += [np.ones((2, 3, 4), bool), np.zeros((2, 3, 4), bool), np.ones((1, 1, 1), bool), np.zeros((1, 1, 1), bool)]
    one = np.zeros((3, 40, 50), bool)
    one[0, 5, 7] = one[1, 0, 0] = one[2, -1, -1] = True
    yy, xx = np.mgrid[:90, :160]
    blobs = np.stack([(yy - 45) ** 2 + (xx - 80) ** 2 < r * r for r in (2, 30, 44)])
    # Long runs: deltas need 4-5 groups of 5 bits, negative deltas included.
    long_runs = np.zeros((2, 600, 700), bool)
    long_runs[0, :, :350] = True
    long_runs[1, 599, 699] = True
    return cases + [one, blobs, long_runs]


@pytest.mark.parametrize("case", range(10))
def test_device_path_is_byte_identical_to_pycocotools(case):
    # The accelerator path (run lengths + string encoding as tensor ops) run here on CPU tensors.
    masks = _rle_cases()[case]
    stack = torch.from_numpy(masks)
    counts, num_runs = rle_run_lengths(stack)
    expected = _pycocotools_counts(masks)
    assert rle_counts_to_strings(counts, num_runs, num_pixels=masks.shape[1] * masks.shape[2]) == expected
    assert encode_masks(masks) == _pycocotools_counts(masks)
    assert encode_masks(stack) == _pycocotools_counts(masks)


def test_run_lengths_by_hand():
    # Column-major: frame 0 [[0,1],[0,1],[1,1]] -> zeros 2, ones 4; frame 1 starts with a one -> [0, 1, 5].
    masks = torch.tensor([[[0, 1], [0, 1], [1, 1]], [[1, 0], [0, 0], [0, 0]]], dtype=torch.bool)
    counts, num_runs = rle_run_lengths(masks)
    assert counts.tolist() == [2, 4, 0, 1, 5]
    assert num_runs.tolist() == [2, 3]
    # rleToString by hand: 2 -> '2', 4 -> '4'; 0 -> '0', 1 -> '1', 5 - 0 (delta to two before) -> '5'.
    assert rle_counts_to_strings(counts, num_runs, num_pixels=6) == [b"24", b"015"]


def test_integer_tensor_masks_and_bad_tensors():
    masks = torch.tensor([[[0, 3], [0, 0]]], dtype=torch.int32)
    assert encode_masks(masks) == _pycocotools_counts(masks.numpy() != 0)
    with pytest.raises(TypeError, match="dtype"):
        encode_masks(torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="empty frame size"):
        encode_masks(torch.zeros(1, 0, 2, dtype=torch.bool))
