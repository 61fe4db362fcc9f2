"""Tests of the synthetic generator: masks, expression truth, determinism, the ReVOS files it writes."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from vrshq.data import (
    COLOURS,
    SHAPES,
    SIZES,
    SyntheticSceneConfig,
    generate_synthetic_video,
    synthetic_vocabulary,
    load_expression_masks,
    load_foreground_masks,
    load_frames,
    load_mask_dict,
    read_revos,
    write_synthetic_revos,
)
from vrshq.data.synthetic import _draw_track

SIZE = dict(num_frames=8, height=64, width=96)
_NUMBERS = {"two": 2, "three": 3, "four": 4}


def _video(seed: int, **kwargs):
    return generate_synthetic_video(np.random.default_rng([seed]), **{**SIZE, **kwargs})


def _attributes(phrase: str) -> tuple[dict[str, str], int | None]:
    """Parse "the [number] [size] [colour] shape(s)|<shape>(s)" into attributes and a count."""
    words = phrase.split()
    assert words[0] == "the", phrase
    attrs: dict[str, str] = {}
    count = None
    for word in words[1:]:
        if word in _NUMBERS:
            count = _NUMBERS[word]
        elif word in SIZES:
            attrs["size"] = word
        elif word in COLOURS:
            attrs["colour"] = word
        elif word.rstrip("s") in SHAPES or word.rstrip("s") in ("star", "hexagon"):
            attrs["shape"] = word.rstrip("s") if word not in SHAPES else word
        elif word.rstrip("s") == "shape":
            pass
        else:
            raise AssertionError(f"unexpected word {word!r} in {phrase!r}")
    return attrs, count


def _matching(objects, attrs) -> tuple[int, ...]:
    return tuple(o.obj_id for o in objects if all(getattr(o, k) == v for k, v in attrs.items()))


@pytest.mark.parametrize("seed", range(12))
def test_visible_masks_are_exactly_the_painted_pixels(seed):
    # Independent check: a pixel belongs to the visible mask of the colour-c objects iff it is painted c.
    video = _video(seed)
    frames = video.frames.astype(np.int32)
    for colour, rgb in COLOURS.items():
        painted = np.abs(frames - np.asarray(rgb)).max(axis=-1) <= 30
        ids = [o.obj_id for o in video.objects if o.colour == colour]
        expected = video.object_masks[ids].any(axis=0) if ids else np.zeros(frames.shape[:3], bool)
        np.testing.assert_array_equal(painted, expected, err_msg=f"seed {seed}, colour {colour}")


def test_occluded_object_mask_is_its_visible_part():
    seed = next(s for s in range(200) if any(e.kind == "hides_behind" for e in _video(s).expressions))
    video = _video(seed)
    expression = next(e for e in video.expressions if e.kind == "hides_behind")
    back = video.objects[expression.obj_ids[0]]
    full_back = _draw_track(back, SIZE["height"], SIZE["width"])
    in_front = [o for o in video.objects if o.depth > back.depth]
    cover = np.zeros_like(full_back)
    for obj in in_front:
        cover |= _draw_track(obj, SIZE["height"], SIZE["width"])
    np.testing.assert_array_equal(video.object_masks[back.obj_id], full_back & ~cover)
    hidden = 1 - video.object_masks[back.obj_id].sum(axis=(1, 2)) / full_back.sum(axis=(1, 2))
    assert hidden.max() >= 0.5  # it does hide (at least half covered in some frame)
    assert hidden.min() < 0.5  # and is visible in other frames


@pytest.mark.parametrize("seed", range(40))
def test_expressions_identify_exactly_their_targets(seed):
    video = _video(seed, num_frames=8)
    objects = video.objects
    assert len({(o.size, o.colour, o.shape) for o in objects}) == len(objects)
    kinds = set()
    for e in video.expressions:
        kinds.add(e.kind)
        if e.kind in ("referring", "group", "no_target"):
            attrs, count = _attributes(e.text)
            assert _matching(objects, attrs) == e.obj_ids, e
            if e.kind == "group":
                assert count == len(e.obj_ids) >= 2
            assert e.type_id == {"referring": 0, "group": 0, "no_target": 2}[e.kind]
        elif e.kind == "fastest":
            speeds = sorted((o.speed for o in objects), reverse=True)
            assert objects[e.obj_ids[0]].speed == speeds[0] >= 1.5 * speeds[1]
        elif e.kind == "static":
            assert [o.obj_id for o in objects if o.speed == 0] == list(e.obj_ids)
            assert np.ptp(objects[e.obj_ids[0]].centers, axis=0).max() == 0
        elif e.kind == "moving":
            assert e.obj_ids == tuple(o.obj_id for o in objects if o.speed > 0)
        elif e.kind in ("hides_behind", "covers"):
            phrase = "the " + re.split(r" (?:behind|covers) the ", e.text.rstrip("?"))[1]
            (other,) = _matching(objects, _attributes(phrase)[0])
            back, front = (e.obj_ids[0], other) if e.kind == "hides_behind" else (other, e.obj_ids[0])
            assert objects[front].depth > objects[back].depth
            full_back = _draw_track(objects[back], SIZE["height"], SIZE["width"])
            full_front = _draw_track(objects[front], SIZE["height"], SIZE["width"])
            covered = (full_back & full_front).sum(axis=(1, 2)) / full_back.sum(axis=(1, 2))
            assert covered.max() >= 0.5, e
        if e.type_id != 2:
            assert e.obj_ids and e.type_id in (0, 1)
        else:
            assert e.obj_ids == ()
    assert {"referring", "no_target"} <= kinds


def test_generator_covers_the_whole_grammar_and_moves_objects():
    videos = [_video(s) for s in range(60)]
    kinds = {e.kind for v in videos for e in v.expressions}
    assert kinds == {"referring", "group", "fastest", "static", "moving", "hides_behind", "covers", "no_target"}
    assert any(e.text.endswith("?") for v in videos for e in v.expressions)
    assert {o.shape for v in videos for o in v.objects} == set(SHAPES)
    speeds = {o.speed_class for v in videos for o in v.objects}
    assert speeds == {"static", "slow", "medium", "fast"}
    for video in videos:
        for obj in video.objects:  # bouncing keeps every shape inside the frame
            assert video.object_masks[obj.obj_id].any(axis=(1, 2)).mean() >= 0.5
            if obj.speed > 0:
                steps = np.linalg.norm(np.diff(obj.centers, axis=0), axis=1)
                assert steps.max() <= obj.speed + 1e-6 and steps.max() > 0.5 * obj.speed


def test_vocabulary_covers_every_expression():
    vocabulary = set(synthetic_vocabulary())
    assert {"the", "?", "red", "circle", "circles", "star", "fastest", "behind", "two"} <= vocabulary
    words = {w for s in range(60) for e in _video(s).expressions for w in e.text.replace("?", " ? ").split()}
    assert words <= vocabulary
    assert len(words) > 0.8 * len(vocabulary)  # and the vocabulary is not padded with unused words


def test_generator_is_deterministic_and_seed_dependent():
    a, b, c = _video(5), _video(5), _video(6)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.object_masks, b.object_masks)
    assert a.expressions == b.expressions
    assert not np.array_equal(a.frames, c.frames)


def test_target_masks_union_and_foreground():
    video = next(v for v in (_video(s) for s in range(50)) if any(e.kind == "group" for e in v.expressions))
    group = next(e for e in video.expressions if e.kind == "group")
    expected = np.zeros(video.frames.shape[:3], bool)
    for obj_id in group.obj_ids:
        expected |= video.object_masks[obj_id]
    np.testing.assert_array_equal(video.target_masks(group), expected)
    np.testing.assert_array_equal(video.foreground, video.object_masks.any(axis=0))


def test_scene_config_validation():
    with pytest.raises(ValueError, match="num_objects"):
        SyntheticSceneConfig(num_objects=(3, 2))
    with pytest.raises(ValueError, match="well apart"):
        SyntheticSceneConfig(small_radius=(0.1, 0.15), large_radius=(0.16, 0.2))
    with pytest.raises(ValueError, match="speeds"):
        SyntheticSceneConfig(speeds=(0.05, 0.03, 0.07))
    with pytest.raises(ValueError, match="num_frames"):
        generate_synthetic_video(np.random.default_rng(0), num_frames=1, height=64, width=64)


def test_expression_types_filter():
    video = _video(3, config=SyntheticSceneConfig(expression_types=(0,)))
    assert {e.type_id for e in video.expressions} == {0}


# ------------------------------------------------------------------------------------ the writer


def test_written_files_follow_the_revos_format(synthetic_revos_info, synthetic_revos_local):
    info = synthetic_revos_info
    root = synthetic_revos_local
    meta = json.loads((root / "meta_expressions_valid_.json").read_text())
    assert list(meta["videos"]) == list(info.video_ids) == [f"synthetic/valid/vid{i:04d}" for i in range(4)]
    mask_dict = json.loads((root / "mask_dict.json").read_text())
    foreground = json.loads((root / "mask_dict_foreground.json").read_text())
    anno_ids = set()
    for video_id, entry in meta["videos"].items():
        assert entry["frames"] == [f"{t:05d}" for t in range(6)] and (entry["height"], entry["width"]) == (64, 96)
        assert all((root / "JPEGImages" / video_id / f"{f}.jpg").is_file() for f in entry["frames"])
        assert (root / "videos" / f"{video_id}.mp4").is_file()
        for exp in entry["expressions"].values():
            assert set(exp) == {"exp", "obj_id", "anno_id", "type_id"}
            assert len(exp["obj_id"]) == len(exp["anno_id"]) and (exp["type_id"] == 2) == (exp["anno_id"] == [])
            anno_ids.update(exp["anno_id"])
        assert set(foreground[video_id]) == {"masks_rle", "foreground_ratio"}
    assert {str(a) for a in anno_ids} <= set(mask_dict)
    assert info.num_expressions == sum(len(v["expressions"]) for v in meta["videos"].values())
    assert set(info.expressions_by_type) == {0, 1, 2}
    assert set(info.expressions_by_kind) == {
        "referring", "group", "fastest", "static", "moving", "hides_behind", "covers", "no_target"
    }


def test_written_masks_match_the_generator(synthetic_revos_local, synthetic_revos_args):
    args = synthetic_revos_args
    videos = read_revos(synthetic_revos_local, split="valid")
    mask_dict = load_mask_dict(videos[0].mask_dict_uri)
    for index, record in enumerate(videos):
        generated = generate_synthetic_video(
            np.random.default_rng([args["seed"], index]),
            num_frames=args["num_frames"], height=args["height"], width=args["width"],
        )
        assert [e.text for e in record.expressions] == [e.text for e in generated.expressions]
        for expression, synthetic in zip(record.expressions, generated.expressions):
            masks = load_expression_masks(record, expression, mask_dict=mask_dict)
            np.testing.assert_array_equal(masks, generated.target_masks(synthetic))
        fg, ratio = load_foreground_masks(record)
        np.testing.assert_array_equal(fg, generated.foreground)
        np.testing.assert_allclose(ratio, generated.foreground.mean(axis=(1, 2)))
        frames = load_frames(record)
        assert np.abs(frames.astype(int) - generated.frames).mean() < 6  # JPEG q95 of a noisy image


def test_mp4_round_trip(synthetic_revos_local):
    jpeg = read_revos(synthetic_revos_local, split="valid")
    mp4 = read_revos(synthetic_revos_local, split="valid", frames_from="mp4")
    assert mp4[0].frames_uri is None and mp4[0].video_uri.endswith("videos/synthetic/valid/vid0000.mp4")
    all_frames = load_frames(mp4[1])
    assert all_frames.shape == (6, 64, 96, 3)
    subset = load_frames(mp4[1], frame_indices=[5, 0, 2])
    np.testing.assert_array_equal(subset, all_frames[[5, 0, 2]])
    reference = load_frames(jpeg[1])
    assert np.abs(all_frames.astype(int) - reference).mean() < 12  # mp4v is lossy, but the same video


def test_writer_is_deterministic_and_independent_of_num_videos(tmp_path):
    a = write_synthetic_revos(str(tmp_path / "a"), num_videos=2, num_frames=4, height=48, width=64, seed=3, split="train")
    b = write_synthetic_revos(str(tmp_path / "b"), num_videos=3, num_frames=4, height=48, width=64, seed=3, split="train")
    assert a.video_ids[0] == "synthetic/train/vid0000" and len(b.video_ids) == 3
    for video_id in a.video_ids:
        for t in range(4):
            rel = f"JPEGImages/{video_id}/{t:05d}.jpg"
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert (tmp_path / "a" / "meta_expressions_train_.json").is_file()


def test_writer_keeps_colour_at_full_resolution_unless_asked(tmp_path):
    """4:4:4 JPEGs (the default) keep the drawn colours of small shapes; 4:2:0 blurs them (the tiny checkpoint
    loses ~0.08 J&F on it), so the default must be measurably closer to the generator's frames."""
    args = dict(num_videos=1, num_frames=2, height=64, width=64, seed=5)
    write_synthetic_revos(str(tmp_path / "full"), **args)
    write_synthetic_revos(str(tmp_path / "half"), jpeg_chroma="420", **args)
    raw = generate_synthetic_video(np.random.default_rng([5, 0]), num_frames=2, height=64, width=64).frames
    errors = {}
    for name in ("full", "half"):
        (video,) = read_revos(str(tmp_path / name), split="valid")
        frames = load_frames(video)
        errors[name] = np.abs(frames.astype(int) - raw.astype(int)).mean()
    assert errors["full"] < 0.7 * errors["half"], errors
    with pytest.raises(ValueError, match="jpeg_chroma must be one of"):
        write_synthetic_revos(str(tmp_path / "bad"), jpeg_chroma="422", **args)
