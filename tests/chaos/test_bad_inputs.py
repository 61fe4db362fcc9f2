"""Hostile inputs at the reader level: a seeded corpus of >= 200 cases (see :mod:`tests.chaos.corpus`).

Contract checked for every case: the reader returns a valid result or raises ``vrshq.data.DataError``
whose ``uri`` is the offending file and whose message names the field/frame -- never another
exception type, never a crash or a hang (mp4 decoding runs under a per-case time bound).
The same kinds of input go through a whole ``run_inference`` job in ``test_jobs_under_faults.py``.
"""
from __future__ import annotations

import io
import time

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pipelines.inference.run import records_from_manifest
from pipelines.inference.manifest import records_to_manifest
from tests.chaos import corpus
from tests.chaos.figures import FIGURES
from vrshq.data import (
    DataError,
    ExpressionRecord,
    VideoRecord,
    decode_image,
    decode_rle,
    encode_mp4,
    load_expression_masks,
    load_frames,
    parse_meta_expressions,
)

FRAMES = tuple(f"{i:05d}" for i in range(6))
JPEG = corpus.jpeg_bytes(seed=1)
MP4 = encode_mp4(np.random.default_rng(2).integers(0, 256, (6, 32, 48, 3), dtype=np.uint8))

JPEG_CASES = list(corpus.corrupt_bytes(JPEG, 60, seed=11))
MP4_CASES = list(corpus.corrupt_bytes(MP4, 40, seed=12))
MODE_CASES = list(corpus.image_mode_cases())
META_CASES = list(corpus.meta_cases(90))
RLE_CASES = list(corpus.rle_cases(36))


def _video(tmp_path, *, frames_uri=None, video_uri=None, names=FRAMES, height=None, width=None,
           expressions=(), mask_dict_uri=None) -> VideoRecord:
    return VideoRecord(dataset="revos", split="valid", video_id="chaos/vid", frame_names=tuple(names),
                       frames_uri=frames_uri, video_uri=video_uri, height=height, width=width,
                       expressions=tuple(expressions), mask_dict_uri=mask_dict_uri, foreground_uri=None)


def _count(kind: str, n: int = 1) -> None:
    FIGURES.add("inputs", kind, n)


@pytest.mark.parametrize("case", JPEG_CASES, ids=lambda c: c.name)
def test_corrupt_jpeg_in_a_frame_folder(case, tmp_path):
    folder = tmp_path / "JPEGImages" / "chaos" / "vid"
    folder.mkdir(parents=True)
    for i, name in enumerate(FRAMES):
        (folder / f"{name}.jpg").write_bytes(case.payload if i == 3 else JPEG)
    video = _video(tmp_path, frames_uri=str(folder))
    _count("jpeg truncated/bit-flipped")
    try:
        frames = load_frames(video)
    except DataError as exc:
        assert exc.uri.endswith(f"{FRAMES[3]}.jpg"), exc.uri
        assert exc.reason and str(exc).startswith(exc.uri)
        return
    assert not case.must_fail, "a JPEG cut before half its size decoded"
    assert frames.dtype == np.uint8 and frames.shape == (6, 24, 32, 3)


@pytest.mark.parametrize("case", MP4_CASES, ids=lambda c: c.name)
def test_corrupt_mp4(case, tmp_path):
    path = tmp_path / "vid.mp4"
    path.write_bytes(case.payload)
    _count("mp4 truncated/bit-flipped")
    start = time.monotonic()
    try:
        frames = load_frames(_video(tmp_path, video_uri=str(path)))
    except DataError as exc:
        assert exc.uri == str(path) and exc.reason
    else:
        assert not case.must_fail and frames.dtype == np.uint8 and frames.shape[0] == len(FRAMES)
    assert time.monotonic() - start < 10, "decoding a corrupt mp4 must not hang"


@pytest.mark.parametrize("payload", [b"", MP4[:48], b"\x00" * 64], ids=["empty", "header-only", "zeros"])
def test_zero_frame_mp4(payload, tmp_path):
    path = tmp_path / "vid.mp4"
    path.write_bytes(payload)
    _count("zero-frame / empty video")
    with pytest.raises(DataError) as info:
        load_frames(_video(tmp_path, video_uri=str(path)))
    assert info.value.uri == str(path)


@pytest.mark.parametrize("case", MODE_CASES, ids=lambda c: c.name)
def test_image_modes_decode_to_rgb_uint8(case):
    _count("grayscale/CMYK/16-bit/palette/alpha image")
    image = decode_image(case.payload, uri="f.jpg")
    assert image.dtype == np.uint8 and image.shape == (20, 28, 3)
    with Image.open(io.BytesIO(case.payload)) as source:
        if source.mode in ("I;16", "I;16B", "I;16L"):  # 16-bit: the high byte, hand-computed
            np.testing.assert_array_equal(image[..., 0], (np.asarray(source).astype(np.int64) >> 8).astype(np.uint8))


@pytest.mark.parametrize("odd", [(24, 33), (25, 32), (12, 16)], ids=str)
def test_frames_of_different_sizes_in_one_video(odd, tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    for i, name in enumerate(FRAMES):
        data = corpus.jpeg_bytes(*odd, seed=i) if i == 4 else corpus.jpeg_bytes(seed=i)
        (folder / f"{name}.jpg").write_bytes(data)
    _count("frames of different sizes in one video")
    with pytest.raises(DataError) as info:
        load_frames(_video(tmp_path, frames_uri=str(folder)))
    assert str(folder) in info.value.uri and "size" in str(info.value).lower(), str(info.value)


def test_frame_size_disagrees_with_meta(tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    for name in FRAMES:
        (folder / f"{name}.jpg").write_bytes(JPEG)
    _count("frame size disagrees with meta height/width")
    with pytest.raises(DataError, match="24x32.*meta says 30x40"):
        load_frames(_video(tmp_path, frames_uri=str(folder), height=30, width=40))


@pytest.mark.parametrize("case", META_CASES, ids=lambda c: c.name)
def test_malformed_meta_expressions(case):
    _count("meta_expressions.json malformed or hostile")
    try:
        parsed = parse_meta_expressions(case.payload, uri="s3://b/meta_expressions_valid.json", require_type_id=True)
    except DataError as exc:
        assert exc.uri == "s3://b/meta_expressions_valid.json"
        assert "videos" in exc.reason or "video 'vid/a'" in exc.reason, exc.reason
        assert case.must_fail or False, f"a valid meta was refused: {exc}"
        return
    assert not case.must_fail, f"malformed meta accepted: {case.payload}"
    texts = {e.exp_id: e.text for v in parsed for e in v[4]}
    assert texts["0"] == case.payload["videos"]["vid/a"]["expressions"]["0"]["exp"]  # kept verbatim, 10k chars too


@pytest.mark.parametrize("case", RLE_CASES, ids=lambda c: c.name)
def test_rle_disagreeing_with_the_frame(case):
    _count("RLE disagreeing with the frame")
    with pytest.raises(DataError) as info:
        decode_rle(case.payload, height=12, width=16, uri="mask_dict.json", where="anno_id 7 frame 2")
    assert info.value.uri == "mask_dict.json" and info.value.reason.startswith("anno_id 7 frame 2")


def test_unknown_anno_id_and_short_mask_list(tmp_path):
    expression = ExpressionRecord(exp_id="0", text="x", obj_ids=(1,), anno_ids=(99,), type_id=0)
    video = _video(tmp_path, frames_uri=str(tmp_path), height=12, width=16, expressions=(expression,),
                   mask_dict_uri="mask_dict.json")
    _count("unknown anno_id / wrong mask count", 2)
    with pytest.raises(DataError, match="anno_id 99 is not in the mask dict"):
        load_expression_masks(video, expression, mask_dict={"7": [None] * len(FRAMES)})
    short = ExpressionRecord(exp_id="0", text="x", obj_ids=(1,), anno_ids=(7,), type_id=0)
    with pytest.raises(DataError, match="anno_id 7 has 2 per-frame masks, expected 6"):
        load_expression_masks(video, short, mask_dict={"7": [None, None]})


def test_duplicate_manifest_rows_become_errors_not_duplicates(tmp_path):
    expressions = tuple(ExpressionRecord(exp_id=str(i), text=f"thing {i}", obj_ids=(i,), anno_ids=(i,), type_id=i % 2)
                        for i in range(3))
    video = _video(tmp_path, frames_uri="s3://b/JPEGImages/chaos/vid", expressions=expressions)
    table = records_to_manifest([video])
    rows = table.to_pylist()
    rows += [dict(rows[1]), dict(rows[1], expression="a different text for the same pair"), dict(rows[2])]
    _count("duplicate (video, expression) manifest rows", 3)
    records, errors = records_from_manifest(pa.Table.from_pylist(rows, schema=table.schema))
    assert [e.exp_id for e in records[0].expressions] == ["0", "1", "2"]
    assert [e.text for e in records[0].expressions] == ["thing 0", "thing 1", "thing 2"]  # the first row wins
    assert sorted((e["exp_id"], e["stage"]) for e in errors) == [("1", "read"), ("1", "read"), ("2", "read")]
    assert all("duplicate manifest row" in e["message"] and "chaos/vid" in e["message"] for e in errors)


def test_corpus_size():
    """At least 200 generated cases per run (tests/chaos/FIGURES.md)."""
    total = len(JPEG_CASES) + len(MP4_CASES) + len(MODE_CASES) + len(META_CASES) + len(RLE_CASES)
    assert total >= 200, total
