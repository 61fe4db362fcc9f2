"""COCO RLE round trips and agreement with pycocotools' per-frame API and hand-computed runs."""
from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from pipelines.rle import decode_masks, encode_masks, mask_areas


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
