"""Readers, frame decoding and mask loading: local folders, the S3 server, ReVOS and MeViS layouts."""
from __future__ import annotations

import dataclasses
import io
import json
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image

from vrshq.data import (
    DataError,
    ExpressionRecord,
    VideoRecord,
    decode_image,
    load_expression_masks,
    load_foreground_masks,
    load_frames,
    load_mask_dict,
    normalize_eval_text,
    read_mevis,
    read_revos,
    write_synthetic_revos,
)


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_read_revos_records(synthetic_revos_local, synthetic_revos_info):
    videos = read_revos(str(synthetic_revos_local), split="valid")
    assert [v.video_id for v in videos] == list(synthetic_revos_info.video_ids)
    meta = json.loads((synthetic_revos_local / "meta_expressions_valid_.json").read_text())
    for video in videos:
        entry = meta["videos"][video.video_id]
        assert video.dataset == "revos" and video.split == "valid"
        assert video.frame_names == tuple(entry["frames"]) and (video.height, video.width) == (64, 96)
        assert video.frames_uri == f"{synthetic_revos_local}/JPEGImages/{video.video_id}"
        assert video.mask_dict_uri == f"{synthetic_revos_local}/mask_dict.json"
        assert video.foreground_uri == f"{synthetic_revos_local}/mask_dict_foreground.json"
        assert [e.exp_id for e in video.expressions] == list(entry["expressions"])
        for e in video.expressions:
            raw = entry["expressions"][e.exp_id]
            assert (e.text, list(e.obj_ids), list(e.anno_ids), e.type_id) == (
                raw["exp"], raw["obj_id"], raw["anno_id"], raw["type_id"]
            )


def test_expression_mask_is_union_of_anno_masks(synthetic_revos_local):
    videos = read_revos(str(synthetic_revos_local), split="valid")
    mask_dict = load_mask_dict(videos[0].mask_dict_uri)
    multi = [(v, e) for v in videos for e in v.expressions if len(e.anno_ids) > 1]
    assert multi
    for video, expression in multi:
        union = load_expression_masks(video, expression, mask_dict=mask_dict)
        parts = [
            load_expression_masks(video, dataclasses.replace(expression, anno_ids=(a,), obj_ids=(o,)), mask_dict=mask_dict)
            for a, o in zip(expression.anno_ids, expression.obj_ids)
        ]
        np.testing.assert_array_equal(union, np.logical_or.reduce(parts))
        assert union.sum() > max(p.sum() for p in parts)  # the parts are different objects
        # loading the mask dict from the record gives the same, and frame_indices select frames
        np.testing.assert_array_equal(load_expression_masks(video, expression), union)
        np.testing.assert_array_equal(
            load_expression_masks(video, expression, mask_dict=mask_dict, frame_indices=[4, 1]), union[[4, 1]]
        )


def test_no_target_expression_has_empty_masks(synthetic_revos_local):
    video = read_revos(str(synthetic_revos_local), split="valid")[0]
    expression = next(e for e in video.expressions if e.type_id == 2)
    masks = load_expression_masks(video, expression)
    assert masks.shape == (6, 64, 96) and masks.dtype == bool and not masks.any()


def test_null_rle_frames_are_empty(synthetic_revos_local):
    video = read_revos(str(synthetic_revos_local), split="valid")[0]
    expression = next(e for e in video.expressions if len(e.anno_ids) == 1)
    mask_dict = load_mask_dict(video.mask_dict_uri)
    before = load_expression_masks(video, expression, mask_dict=mask_dict)
    assert before[2].any()
    edited = {**mask_dict, str(expression.anno_ids[0]): list(mask_dict[str(expression.anno_ids[0])])}
    edited[str(expression.anno_ids[0])][2] = None
    after = load_expression_masks(video, expression, mask_dict=edited)
    assert not after[2].any()
    np.testing.assert_array_equal(np.delete(after, 2, axis=0), np.delete(before, 2, axis=0))


def test_load_frames_subsets_and_order(synthetic_revos_local):
    video = read_revos(str(synthetic_revos_local), split="valid")[2]
    frames = load_frames(video)
    assert frames.shape == (6, 64, 96, 3) and frames.dtype == np.uint8
    first = np.asarray(Image.open(synthetic_revos_local / "JPEGImages" / video.video_id / "00000.jpg").convert("RGB"))
    np.testing.assert_array_equal(frames[0], first)
    np.testing.assert_array_equal(load_frames(video, frame_indices=[3, 0, 3], decode_threads=1), frames[[3, 0, 3]])
    with pytest.raises(IndexError, match="out of range"):
        load_frames(video, frame_indices=[6])


def test_revos_meta_file_names(synthetic_revos_local, tmp_path):
    root = tmp_path / "revos"
    shutil.copytree(synthetic_revos_local, root)
    official = read_revos(str(root), split="valid")
    (root / "meta_expressions_valid_.json").rename(root / "meta_expressions_valid.json")
    assert read_revos(str(root), split="valid") == [
        dataclasses.replace(v, frames_uri=v.frames_uri) for v in official
    ]
    (root / "meta_expressions_valid.json").rename(root / "custom.json")
    with pytest.raises(DataError, match=r"meta_expressions_valid_\.json.*meta_expressions_valid\.json") as info:
        read_revos(str(root), split="valid")
    assert info.value.uri == str(root)
    assert read_revos(str(root), split="valid", meta_file="custom.json") == official
    assert read_revos(str(root), split="valid", meta_file=str(root / "custom.json")) == official


def _make_mevis(src, dst, split: str, *, with_masks: bool) -> dict:
    """A MeViS-layout split built from the synthetic ReVOS files (no type_id, no frame size)."""
    meta = json.loads((src / "meta_expressions_valid_.json").read_text())
    videos = {}
    for i, (video_id, entry) in enumerate(meta["videos"].items()):
        name = f"vid{i:03d}"
        shutil.copytree(src / "JPEGImages" / video_id, dst / split / "JPEGImages" / name)
        expressions = {}
        for k, e in entry["expressions"].items():
            expressions[k] = {"exp": e["exp"], "obj_id": e["obj_id"], "anno_id": e["anno_id"]} if with_masks else {"exp": e["exp"]}
        videos[name] = {"expressions": expressions, "vid_id": i, "frames": list(reversed(entry["frames"]))}
    (dst / split / "meta_expressions.json").write_text(json.dumps({"videos": videos}))
    if with_masks:
        shutil.copy(src / "mask_dict.json", dst / split / "mask_dict.json")
    return videos


def test_read_mevis(synthetic_revos_local, tmp_path):
    _make_mevis(synthetic_revos_local, tmp_path, "valid_u", with_masks=True)
    _make_mevis(synthetic_revos_local, tmp_path, "valid", with_masks=False)
    revos = read_revos(str(synthetic_revos_local), split="valid")
    valid_u = read_mevis(str(tmp_path), split="valid_u")
    valid = read_mevis(str(tmp_path), split="valid")
    assert [v.video_id for v in valid_u] == ["vid000", "vid001", "vid002", "vid003"]
    for r, m, u in zip(revos, valid_u, valid):
        assert m.dataset == "mevis" and m.split == "valid_u" and m.height is None and m.width is None
        assert m.frame_names == r.frame_names  # sorted, whatever the meta order
        assert m.frames_uri == f"{tmp_path}/valid_u/JPEGImages/{m.video_id}"
        assert m.mask_dict_uri == f"{tmp_path}/valid_u/mask_dict.json" and m.foreground_uri is None
        assert [(e.text, e.anno_ids, e.type_id) for e in m.expressions] == [(e.text, e.anno_ids, 0) for e in r.expressions]
        np.testing.assert_array_equal(load_frames(m), load_frames(r))
        for em, er in zip(m.expressions, r.expressions):  # frame size comes from the JPEG header
            np.testing.assert_array_equal(load_expression_masks(m, em), load_expression_masks(r, er))
        assert u.mask_dict_uri is None and all(e.anno_ids == () and e.obj_ids == () for e in u.expressions)
    video, expression = valid_u[0], next(e for e in valid_u[0].expressions if e.anno_ids)
    np.testing.assert_array_equal(
        load_expression_masks(video, expression, frame_size=(64, 96)), load_expression_masks(video, expression)
    )
    with pytest.raises(DataError, match="disagrees with the frame size 70x96"):
        load_expression_masks(video, expression, frame_size=(70, 96))


def test_local_and_s3_give_identical_records_frames_and_masks(
    s3_server, synthetic_revos_local, synthetic_revos_args
):
    bucket = s3_server.make_bucket()
    s3_root = f"{bucket}/datasets/revos"
    options = s3_server.storage_options
    info = write_synthetic_revos(s3_root, storage_options=options, write_mp4=True, **synthetic_revos_args)
    assert info.meta_uri == f"{s3_root}/meta_expressions_valid_.json"
    local = read_revos(str(synthetic_revos_local), split="valid")
    remote = read_revos(s3_root, split="valid", storage_options=options)
    assert len(remote) == len(local) == 4
    fs = s3_server.filesystem()
    for lv, rv in zip(local, remote):
        assert rv.frames_uri == f"{s3_root}/JPEGImages/{rv.video_id}"
        assert rv.mask_dict_uri == f"{s3_root}/mask_dict.json"
        assert dataclasses.replace(rv, frames_uri=lv.frames_uri, mask_dict_uri=lv.mask_dict_uri, foreground_uri=lv.foreground_uri) == lv
        # deterministic writer: same bytes on S3 as on disk
        assert fs.cat_file(f"{rv.frames_uri}/00003.jpg") == (synthetic_revos_local / "JPEGImages" / lv.video_id / "00003.jpg").read_bytes()
        np.testing.assert_array_equal(load_frames(rv, storage_options=options), load_frames(lv))
        for le, re_ in zip(lv.expressions, rv.expressions):
            np.testing.assert_array_equal(
                load_expression_masks(rv, re_, storage_options=options), load_expression_masks(lv, le)
            )
        np.testing.assert_array_equal(load_foreground_masks(rv, storage_options=options)[0], load_foreground_masks(lv)[0])
    mp4 = read_revos(s3_root, split="valid", storage_options=options, frames_from="mp4")[0]
    local_mp4 = read_revos(str(synthetic_revos_local), split="valid", frames_from="mp4")[0]
    np.testing.assert_array_equal(load_frames(mp4, storage_options=options, frame_indices=[1, 4]), load_frames(local_mp4, frame_indices=[1, 4]))


def test_s3_missing_frame_is_a_data_error(s3_server, synthetic_revos_args):
    bucket = s3_server.make_bucket()
    options = s3_server.storage_options
    args = {**synthetic_revos_args, "num_videos": 1}
    write_synthetic_revos(bucket, storage_options=options, **args)
    video = read_revos(bucket, split="valid", storage_options=options)[0]
    s3_server.filesystem().rm_file(f"{video.frames_uri}/00002.jpg")
    with pytest.raises(DataError, match="not found") as info:
        load_frames(video, storage_options=options)
    assert info.value.uri == f"{video.frames_uri}/00002.jpg"


# ------------------------------------------------------------------------------ image conversion


def test_decode_rgb_jpeg_and_png():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(_encode(Image.fromarray(rgb), "PNG")), rgb)
    jpeg = decode_image(_encode(Image.fromarray(rgb), "JPEG", quality=100))
    assert jpeg.shape == (5, 7, 3) and jpeg.dtype == np.uint8


def test_decode_grayscale_to_rgb():
    gray = np.array([[0, 50], [128, 255]], dtype=np.uint8)
    for fmt in ("PNG", "JPEG"):
        out = decode_image(_encode(Image.fromarray(gray, mode="L"), fmt, **({"quality": 100} if fmt == "JPEG" else {})))
        assert out.shape == (2, 2, 3) and out.dtype == np.uint8
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
        assert np.abs(out[..., 0].astype(int) - gray).max() <= (0 if fmt == "PNG" else 3)


def test_decode_16bit_png_keeps_the_high_byte():
    values = np.array([[0x0000, 0x12FF], [0x8000, 0xFFFF]], dtype=np.uint16)
    data = _encode(Image.fromarray(values), "PNG")
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode.startswith("I")  # really a 16-bit image
    out = decode_image(data)
    np.testing.assert_array_equal(out, np.repeat(np.array([[0x00, 0x12], [0x80, 0xFF]], np.uint8)[..., None], 3, axis=2))


def test_decode_cmyk_jpeg_rgba_and_palette_png():
    cmyk = Image.new("CMYK", (4, 3), (0, 255, 255, 0))  # no cyan, full magenta + yellow = red
    out = decode_image(_encode(cmyk, "JPEG", quality=100))
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    assert (out[..., 0] > 200).all() and (out[..., 1:] < 60).all()
    rgba = Image.new("RGBA", (3, 2), (10, 20, 30, 40))
    np.testing.assert_array_equal(decode_image(_encode(rgba, "PNG")), np.full((2, 3, 3), (10, 20, 30), np.uint8))
    palette = Image.new("RGB", (3, 2), (200, 100, 0)).convert("P", palette=Image.Palette.ADAPTIVE)
    np.testing.assert_array_equal(decode_image(_encode(palette, "PNG")), np.full((2, 3, 3), (200, 100, 0), np.uint8))


def test_grayscale_frame_in_a_video_is_read_as_rgb(synthetic_revos_local, tmp_path):
    root = tmp_path / "revos"
    shutil.copytree(synthetic_revos_local, root)
    video = read_revos(str(root), split="valid")[0]
    path = root / "JPEGImages" / video.video_id / "00001.jpg"
    Image.open(path).convert("L").save(path, format="JPEG", quality=95)
    frames = load_frames(video)
    assert frames.shape == (6, 64, 96, 3)
    assert (frames[1, ..., 0] == frames[1, ..., 2]).all() and not (frames[0, ..., 0] == frames[0, ..., 2]).all()


# ------------------------------------------------------------------------------------ small API


def test_data_error_names_the_file_and_pickles():
    error = DataError("s3://b/x.jpg", "corrupt image")
    assert str(error) == "s3://b/x.jpg: corrupt image"
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.uri, clone.reason, str(clone)) == (error.uri, error.reason, str(error))


def test_records_validate_themselves():
    expression = ExpressionRecord(exp_id="0", text="the red circle", obj_ids=(0,), anno_ids=(3,), type_id=0)
    with pytest.raises(ValueError, match="type_id"):
        dataclasses.replace(expression, type_id=3)
    with pytest.raises(ValueError, match="text"):
        dataclasses.replace(expression, text="  ")
    with pytest.raises(TypeError, match="anno_ids"):
        dataclasses.replace(expression, anno_ids=[3])
    video = VideoRecord(
        dataset="revos", split="valid", video_id="a/b", frame_names=("0",), frames_uri="/x", video_uri=None,
        height=None, width=None, expressions=(expression,),
    )
    with pytest.raises(ValueError, match=r"duplicate exp_id\(s\) \['0'\]"):
        dataclasses.replace(video, expressions=(expression, expression))
    with pytest.raises(ValueError, match="frames_uri or video_uri"):
        dataclasses.replace(video, frames_uri=None)
    assert video.expression("0") is expression and video.num_frames == 1


def test_normalize_eval_text():
    assert normalize_eval_text("  Which   Shape\n never MOVES? ") == "which shape never moves?"


def test_video_ids_with_glob_characters_and_relative_roots(synthetic_revos_local, tmp_path, monkeypatch):
    root = tmp_path / "revos"
    shutil.copytree(synthetic_revos_local, root)
    meta = json.loads((root / "meta_expressions_valid_.json").read_text())
    old = next(iter(meta["videos"]))
    new = "odd/[set]*/vid?"
    meta["videos"] = {new: meta["videos"][old]}
    (root / "meta_expressions_valid_.json").write_text(json.dumps(meta))
    shutil.copytree(root / "JPEGImages" / old, root / "JPEGImages" / new)
    monkeypatch.chdir(tmp_path)
    (video,) = read_revos("revos", split="valid")  # relative root: records hold absolute paths
    assert video.frames_uri == f"{root}/JPEGImages/{new}"
    frames = load_frames(video)
    np.testing.assert_array_equal(frames[0], np.asarray(Image.open(root / "JPEGImages" / new / "00000.jpg").convert("RGB")))


def test_iter_frame_chunks_covers_every_frame_in_order_for_jpeg_and_mp4(synthetic_revos_local):
    # Chunked decoding must give exactly load_frames' frames (JPEG: bit-exact; mp4: same decoder, same
    # frames), in order, with the last chunk short, and an mp4 opened once.
    import numpy as np

    from vrshq.data import iter_frame_chunks, load_frames, read_revos

    for frames_from in ("jpeg", "mp4"):
        video = read_revos(str(synthetic_revos_local), split="valid", frames_from=frames_from)[0]
        whole = load_frames(video)
        chunks = list(iter_frame_chunks(video, chunk_frames=4))
        assert [len(c) for c in chunks] == [4] * (len(whole) // 4) + ([len(whole) % 4] if len(whole) % 4 else [])
        np.testing.assert_array_equal(np.concatenate(chunks), whole)
    with pytest.raises(ValueError, match="chunk_frames"):
        next(iter_frame_chunks(video, chunk_frames=0))


def test_iter_frame_chunks_rejects_a_size_change_between_chunks(tmp_path):
    import numpy as np
    from PIL import Image

    from vrshq.data import DataError, VideoRecord, iter_frame_chunks

    folder = tmp_path / "JPEGImages" / "v"
    folder.mkdir(parents=True)
    for i, (h, w) in enumerate([(8, 10), (8, 10), (12, 10)]):
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(folder / f"{i:05d}.jpg")
    video = VideoRecord(dataset="d", split="s", video_id="v", frame_names=("00000", "00001", "00002"),
                        frames_uri=str(folder), video_uri=None, height=None, width=None, expressions=())
    chunks = iter_frame_chunks(video, chunk_frames=2)
    assert next(chunks).shape == (2, 8, 10, 3)
    with pytest.raises(DataError, match=r"different sizes .* frames from 2 are 12x10 .* frame 0 is 8x10") as info:
        next(chunks)
    assert info.value.uri == str(folder)
