"""Bad input data gives a DataError whose message names the file and the problem."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from vrshq.data import (
    DataError,
    decode_image,
    decode_rle,
    encode_mp4,
    encode_rle,
    load_expression_masks,
    load_foreground_masks,
    load_frames,
    load_mask_dict,
    read_mevis,
    read_revos,
)


@pytest.fixture
def revos(tmp_path, synthetic_revos_local):
    """A private, editable copy of the session's synthetic ReVOS dataset."""
    root = tmp_path / "revos"
    shutil.copytree(synthetic_revos_local, root)
    return root


def _meta(root):
    return json.loads((root / "meta_expressions_valid_.json").read_text())


def _write_meta(root, meta):
    (root / "meta_expressions_valid_.json").write_text(json.dumps(meta))


def _raises(uri, *fragments):
    """Context manager: a DataError whose .uri is ``uri`` and whose message has every fragment."""

    class _Check:
        def __enter__(self):
            self._ctx = pytest.raises(DataError)
            self.info = self._ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self._ctx.__exit__(*exc)
            error = self.info.value
            assert error.uri == str(uri), (error.uri, str(uri))
            assert str(error).startswith(f"{uri}: ")
            for fragment in fragments:
                assert fragment in str(error), (fragment, str(error))
            return handled

    return _Check()


# -------------------------------------------------------------------------------------- frames


def test_missing_frame_file(revos):
    video = read_revos(str(revos), split="valid")[0]
    path = revos / "JPEGImages" / video.video_id / "00004.jpg"
    path.unlink()
    with _raises(path, "frame file not found", video.video_id):
        load_frames(video)
    load_frames(video, frame_indices=[0, 1])  # other frames still load


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_jpeg(revos, damage):
    video = read_revos(str(revos), split="valid")[1]
    path = revos / "JPEGImages" / video.video_id / "00002.jpg"
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00not a jpeg" * 50, "empty": b""}[damage])
    expected = {"truncated": "corrupt image", "garbage": "not a decodable image", "empty": "image file is empty"}[damage]
    with _raises(path, expected):
        load_frames(video)


def test_frames_of_different_sizes(revos):
    video = read_revos(str(revos), split="valid")[0]
    path = revos / "JPEGImages" / video.video_id / "00003.jpg"
    Image.new("RGB", (80, 60), (1, 2, 3)).save(path, format="JPEG")
    with _raises(path, "60x80", "64x96", "00000.jpg"):
        load_frames(dataclasses.replace(video, height=None, width=None))


def test_frames_disagree_with_meta_size(revos):
    video = read_revos(str(revos), split="valid")[0]
    with _raises(video.frames_uri, "64x96", "meta says 64x100"):
        load_frames(dataclasses.replace(video, width=100))


def _mp4_video(revos, index=0):
    return read_revos(str(revos), split="valid", frames_from="mp4")[index]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_corrupt_or_missing_mp4_container(revos, damage):
    video = _mp4_video(revos)
    path = revos / "videos" / f"{video.video_id}.mp4"
    if damage == "missing":
        path.unlink()
    else:
        data = path.read_bytes()
        path.write_bytes(b"\x00garbage" * 100 if damage == "garbage" else data[: len(data) // 2])
    expected = "video file not found" if damage == "missing" else "corrupt or unreadable video"
    with _raises(path, expected):
        load_frames(video)


def test_corrupt_mp4_data(revos):
    # a valid container whose frame data is overwritten: decord raises DECORDError while decoding
    video = _mp4_video(revos)
    path = revos / "videos" / f"{video.video_id}.mp4"
    data = bytearray(path.read_bytes())
    start = data.find(b"mdat") + 8
    data[start : start + 2000] = b"\xff" * 2000
    path.write_bytes(bytes(data))
    with _raises(path, "corrupt video data"):
        load_frames(video)


def test_zero_frame_mp4(revos):
    video = _mp4_video(revos)
    path = revos / "videos" / f"{video.video_id}.mp4"
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (96, 64))
    writer.release()  # no frame written
    with _raises(path, "no video stream"):
        load_frames(video)


def test_mp4_frame_count_disagrees_with_record(revos):
    video = _mp4_video(revos)
    path = revos / "videos" / f"{video.video_id}.mp4"
    path.write_bytes(encode_mp4(np.zeros((3, 64, 96, 3), np.uint8)))
    with _raises(path, "3 frames", "6 frame names"):
        load_frames(video)


def test_decode_image_names_the_uri():
    with _raises("s3://bucket/x.jpg", "not a decodable image"):
        decode_image(b"\x89garbage", uri="s3://bucket/x.jpg")


# --------------------------------------------------------------------------------------- masks


def test_unknown_anno_id(revos):
    meta = _meta(revos)
    video_id = next(iter(meta["videos"]))
    meta["videos"][video_id]["expressions"]["0"]["anno_id"] = [999]
    _write_meta(revos, meta)
    video = read_revos(str(revos), split="valid")[0]
    with _raises(revos / "mask_dict.json", "anno_id 999 is not in the mask dict", video_id, "expression '0'"):
        load_expression_masks(video, video.expression("0"))


def test_rle_size_disagrees_with_frame(revos):
    video = read_revos(str(revos), split="valid")[0]
    expression = video.expressions[0]
    mask_dict = load_mask_dict(video.mask_dict_uri)
    key = str(expression.anno_ids[0])
    mask_dict[key] = list(mask_dict[key])
    mask_dict[key][1] = encode_rle(np.ones((32, 48), bool))
    (revos / "mask_dict.json").write_text(json.dumps(mask_dict))
    with _raises(revos / "mask_dict.json", f"anno_id {key}, frame 1", "RLE size 32x48", "frame size 64x96"):
        load_expression_masks(video, expression)


@pytest.mark.parametrize(
    "rle, fragment",
    [
        ({"size": [4, 5], "counts": "0"}, "cover 0 pixels"),
        ({"size": [4, 5], "counts": "\x01\x02"}, "malformed"),
        ({"size": [4, 5], "counts": [3, 4]}, "summing to 20"),
        ({"size": [4, 5]}, "'size' and 'counts'"),
        ({"size": "4x5", "counts": "0"}, "'size' must be [height, width]"),
        ({"size": [4, 5], "counts": 7}, "'counts' must be a str or a list"),
    ],
)
def test_malformed_rle(rle, fragment):
    with _raises("m.json", fragment):
        decode_rle(rle, height=4, width=5, uri="m.json")


def test_rle_decode_handles_lists_uncompressed_and_null():
    a = np.zeros((4, 5), bool)
    a[1:3, 1:4] = True
    b = np.zeros((4, 5), bool)
    b[0, :] = True
    np.testing.assert_array_equal(decode_rle([encode_rle(a), encode_rle(b)], height=4, width=5), a | b)
    # uncompressed counts, column-major: 4 zeros, then 2 ones, then 14 zeros
    expected = np.zeros((4, 5), bool)
    expected[0:2, 1] = True
    np.testing.assert_array_equal(decode_rle({"size": [4, 5], "counts": [4, 2, 14]}, height=4, width=5), expected)
    assert not decode_rle(None, height=4, width=5).any()


def test_mask_list_length_disagrees(revos):
    video = read_revos(str(revos), split="valid")[0]
    expression = video.expressions[0]
    mask_dict = load_mask_dict(video.mask_dict_uri)
    key = str(expression.anno_ids[0])
    mask_dict[key] = mask_dict[key][:4]
    with _raises(revos / "mask_dict.json", f"anno_id {key} has 4 per-frame masks, expected 6"):
        load_expression_masks(video, expression, mask_dict=mask_dict)


def test_missing_video_in_foreground(revos):
    video = read_revos(str(revos), split="valid")[0]
    with _raises(revos / "mask_dict_foreground.json", "no 'masks_rle'", video.video_id):
        load_foreground_masks(video, foreground_dict={})


def test_no_mask_dict(revos):
    (revos / "mask_dict.json").unlink()
    video = read_revos(str(revos), split="valid")[0]
    assert video.mask_dict_uri is None
    with _raises(video.frames_uri, "no mask_dict.json"):
        load_expression_masks(video, video.expressions[0])


# ---------------------------------------------------------------------------------------- meta


@pytest.mark.parametrize(
    "edit, fragments",
    [
        (lambda v: v["expressions"]["1"].pop("exp"), ["expression '1'", "key 'exp' is missing"]),
        (lambda v: v["expressions"]["0"].update(exp="   "), ["expression '0'", "key 'exp' is empty"]),
        (lambda v: v["expressions"]["0"].update(exp=5), ["key 'exp' must be a str"]),
        (lambda v: v["expressions"]["0"].update(anno_id="x"), ["key 'anno_id' must be a list of ints"]),
        (lambda v: v["expressions"]["0"].update(obj_id=[1.5]), ["key 'obj_id' must be a list of ints"]),
        (lambda v: v["expressions"]["0"].pop("type_id"), ["key 'type_id' is missing"]),
        (lambda v: v["expressions"]["0"].update(type_id=7), ["key 'type_id' must be one of (0, 1, 2)"]),
        (lambda v: v.pop("frames"), ["key 'frames' is missing"]),
        (lambda v: v.update(frames=[]), ["key 'frames' is empty"]),
        (lambda v: v.update(frames=[0, 1]), ["key 'frames' must be a list"]),
        (lambda v: v.update(height="64"), ["key 'height' must be an int in 1..65536"]),
        (lambda v: v.pop("expressions"), ["key 'expressions' is missing"]),
        (lambda v: v.update(expressions=[]), ["key 'expressions' must be an object"]),
    ],
)
def test_malformed_meta_names_video_and_key(revos, edit, fragments):
    meta = _meta(revos)
    video_id = list(meta["videos"])[2]
    edit(meta["videos"][video_id])
    _write_meta(revos, meta)
    with _raises(revos / "meta_expressions_valid_.json", "malformed meta expressions", f"video {video_id!r}", *fragments):
        read_revos(str(revos), split="valid")


def test_malformed_meta_lists_every_problem(revos):
    meta = _meta(revos)
    first, second = list(meta["videos"])[:2]
    meta["videos"][first]["expressions"]["0"].pop("exp")
    meta["videos"][second].pop("frames")
    _write_meta(revos, meta)
    with _raises(revos / "meta_expressions_valid_.json", first, second, "'exp'", "'frames'"):
        read_revos(str(revos), split="valid")


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"videos": []}'])
def test_meta_not_json_or_wrong_top_level(revos, content):
    (revos / "meta_expressions_valid_.json").write_text(content)
    with _raises(revos / "meta_expressions_valid_.json"):
        read_revos(str(revos), split="valid")


def test_mevis_missing_meta(tmp_path):
    with _raises(f"{tmp_path}/valid_u/meta_expressions.json", "meta expressions file not found"):
        read_mevis(str(tmp_path), split="valid_u")


def test_corrupt_mask_dict_json(revos):
    (revos / "mask_dict.json").write_text('{"0": [')
    video = read_revos(str(revos), split="valid")[0]
    with _raises(revos / "mask_dict.json", "mask dict is not valid JSON"):
        load_expression_masks(video, video.expressions[0])
