"""The model actor's ground truth, built on the device from run lengths, equals ``load_expression_masks``."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.inference.device_scoring import ground_truth_chunk
from vrshq.data import DataError, load_expression_masks
from vrshq.data.masks import encode_rle
from vrshq.data.records import ExpressionRecord, VideoRecord

H, W, T = 23, 31, 7


def _masks(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    masks = rng.random((T, H, W)) < 0.3
    masks[0] = True  # one run of ones: the counts start with a zero-length run
    masks[1] = False
    return masks


def _record(anno_ids: tuple[int, ...]) -> tuple[VideoRecord, ExpressionRecord]:
    expression = ExpressionRecord(exp_id="0", text="the thing", obj_ids=anno_ids, anno_ids=anno_ids, type_id=0)
    video = VideoRecord(dataset="d", split="s", video_id="v", frame_names=tuple(f"{t:05d}" for t in range(T)),
                        frames_uri="/nowhere", video_uri=None, height=H, width=W, expressions=(expression,),
                        mask_dict_uri="/nowhere/mask_dict.json")
    return video, expression


def _mask_dict() -> dict:
    a, b, c = _masks(1), _masks(2), _masks(3)
    entries_a = [encode_rle(m) for m in a]
    entries_a[2] = None  # no mask in that frame
    entries_a[3] = {**entries_a[3], "counts": entries_a[3]["counts"].encode()}  # bytes counts
    entries_b = [encode_rle(m) for m in b]
    # uncompressed counts and a list of parts: decoded on the host, same result
    entries_b[4] = {"size": [H, W], "counts": _uncompressed(b[4])}
    entries_b[5] = [encode_rle(b[5] & c[5]), encode_rle(b[5] & ~c[5])]
    return {"1": entries_a, "2": entries_b, "3": [encode_rle(m) for m in c]}


def _uncompressed(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed counts: column-major runs, zeros first."""
    flat = mask.T.reshape(-1).astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


@pytest.mark.parametrize("on_device", [True, None])  # decoded as on a GPU; pycocotools on a CPU
@pytest.mark.parametrize("anno_ids", [(1,), (2,), (1, 2, 3), ()])
@pytest.mark.parametrize("frames", [range(0, T), range(0, 3), range(3, 7), range(5, 6)])
def test_equal_to_load_expression_masks(anno_ids, frames, on_device):
    video, expression = _record(anno_ids)
    mask_dict = _mask_dict()
    want = load_expression_masks(video, expression, mask_dict=mask_dict, frame_indices=frames)
    got, valid = ground_truth_chunk(video, expression, mask_dict, (H, W), frames, torch.device("cpu"),
                                    decode_on_device=on_device)
    assert got.dtype == torch.bool and got.shape == (len(frames), H, W)
    assert (valid is None or bool(valid)) and (on_device or valid is None)
    np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.parametrize("bad", ["missing_anno", "short_list", "wrong_size", "bad_counts", "float_size", "empty"])
def test_rejects_what_load_expression_masks_rejects(bad):
    """What ``load_expression_masks`` rejects raises here or turns the device's flag False (the actor then
    leaves the expression to the writers, which report it)."""
    video, expression = _record((1,))
    mask_dict = _mask_dict()
    if bad == "missing_anno":
        mask_dict.pop("1")
    elif bad == "short_list":
        mask_dict["1"] = mask_dict["1"][:-1]
    elif bad == "wrong_size":
        mask_dict["1"][0] = {**mask_dict["1"][0], "size": [H + 1, W]}
    elif bad == "bad_counts":
        mask_dict["1"][0] = {**mask_dict["1"][0], "counts": mask_dict["1"][0]["counts"][:-2]}
    elif bad == "empty":
        mask_dict["1"][0] = {**mask_dict["1"][0], "counts": ""}
    else:
        mask_dict["1"][0] = {**mask_dict["1"][0], "size": [float(H), W]}
    with pytest.raises(DataError):
        load_expression_masks(video, expression, mask_dict=mask_dict, frame_indices=range(T))
    try:
        _, valid = ground_truth_chunk(video, expression, mask_dict, (H, W), range(T), torch.device("cpu"),
                                      decode_on_device=True)
    except DataError:
        return
    assert bad == "bad_counts" and not bool(valid)


def test_device_decoder_equals_pycocotools_and_flags_what_it_refuses():
    from pipelines.inference.device_scoring import decode_compressed_on_device
    from vrshq.data.masks import compressed_rle_counts, decode_rle

    rng = np.random.default_rng(0)
    masks = np.concatenate([_masks(5), _masks(6), np.zeros((1, H, W), bool)])
    good = [encode_rle(m)["counts"].encode() for m in masks]
    masks_got, valid = decode_compressed_on_device(good, H, W, torch.device("cpu"))
    assert bool(valid)
    np.testing.assert_array_equal(masks_got.numpy(), masks)
    bad = [good[0][:-1], good[1] + b"0", b"\x7f" + good[2], good[3][:5] + b"~" + good[3][5:], b"o" * 13 + b"0",
           good[4] + good[4]]
    for _ in range(60):  # random corruptions of good strings
        data = bytearray(good[int(rng.integers(len(good)))])
        data[int(rng.integers(len(data)))] = int(rng.integers(48, 112))
        bad.append(bytes(data))
    refused = 0
    for data in bad:
        want = compressed_rle_counts(data)
        accepted = want is not None and int(want.sum()) == H * W
        got, ok = decode_compressed_on_device([good[7], data, good[8]], H, W, torch.device("cpu"))
        assert bool(ok) == accepted, data
        refused += not accepted
        if accepted:  # a corruption that is still a valid RLE: the same mask as pycocotools
            np.testing.assert_array_equal(got[1].numpy(), decode_rle({"size": [H, W], "counts": data}, height=H,
                                                                      width=W))
        np.testing.assert_array_equal(got[0].numpy(), masks[7])  # the other strings are unaffected
        np.testing.assert_array_equal(got[2].numpy(), masks[8])
    assert refused >= len(bad) // 2
