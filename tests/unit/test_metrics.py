"""vrshq.metrics: hand-computed J/F/A/R, bit-exactness against the per-frame DAVIS reference,
ReVOS/MeViS aggregation and input errors."""
from __future__ import annotations

import doctest

import numpy as np
import pyarrow as pa
import pytest

import vrshq.metrics
from benchmarks import reference_davis as ref
from vrshq.metrics import (
    bound_pixels,
    boundary_f,
    boundary_map,
    disk_footprint,
    jaccard,
    pixel_accuracy,
    robustness,
    score_expression,
    summarize_mean,
    summarize_revos,
)
from vrshq.metrics import _crop, aggregate, boundary, expression, region
from vrshq.metrics import accuracy_robustness


def _frames(*frames: np.ndarray) -> np.ndarray:
    return np.stack(frames).astype(bool)


def _square(top: int, left: int, size: int, *, shape: tuple[int, int] = (40, 40)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


# --------------------------------------------------------------------------------------------
# Hand-computed J and F. Frames are 40x40, so bound_pix = ceil(0.008 * sqrt(40² + 40²)) =
# ceil(0.45) = 1 and the footprint disk(1) is the 3x3 cross: a boundary pixel is matched when the
# other boundary has a pixel at it or at one of its 4 neighbours.
#
# _seg2bmap of a square covering rows/cols [a, b] is the outline of the square [a - 1, b]: inner
# pixels of the last row/column differ from their south/east neighbour, outer pixels of row/col
# a - 1 differ from their south/east/south-east neighbour. A 10x10 square at (10, 10) has the
# outline of rows/cols 9..19: 4 * 11 - 4 = 40 boundary pixels.
# --------------------------------------------------------------------------------------------


def test_bound_pixels_and_disk():
    assert bound_pixels(40, 40) == 1.0
    assert bound_pixels(480, 854) == 8.0  # ceil(0.008 * 979.6) = ceil(7.84)
    assert bound_pixels(480, 854, bound_th=3) == 3.0  # >= 1: pixels
    cross = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    assert disk_footprint(1.0).tolist() == cross
    assert disk_footprint(8.0).sum() == 197  # integer points with x² + y² <= 64
    assert disk_footprint(2.5).shape == (6, 6)  # arange(-2.5, 3.5): even size, as skimage
    with pytest.raises(ValueError, match="bound_th must be > 0"):
        bound_pixels(10, 10, bound_th=0)


def test_boundary_map_of_a_square_is_its_outline_shifted_to_the_origin():
    outline = np.zeros((40, 40), dtype=bool)
    outline[9:20, 9:20] = True
    outline[10:19, 10:19] = False  # outline of rows/cols 9..19
    bmap = boundary_map(_frames(_square(10, 10, 10)))[0]
    assert np.array_equal(bmap, outline)
    assert bmap.sum() == 40


def test_boundary_map_edge_rules():
    # A full frame has no boundary (the last row/column only compare along the edge).
    assert not boundary_map(np.ones((1, 5, 7), dtype=bool)).any()
    # Bottom-right single pixel: only its west neighbour on the last row differs from its east.
    corner = np.zeros((1, 4, 4), dtype=bool)
    corner[0, 3, 3] = True
    expected = np.zeros((4, 4), dtype=bool)
    expected[2, 2] = True  # south-east neighbour is the pixel
    expected[2, 3] = True  # last column: south neighbour is the pixel
    expected[3, 2] = True  # last row: east neighbour is the pixel
    assert np.array_equal(boundary_map(corner)[0], expected)
    assert np.array_equal(boundary_map(corner)[0], ref.seg2bmap(corner[0]))


def test_square_shifted_by_two_columns():
    gt = _frames(_square(10, 10, 10))
    pred = _frames(_square(10, 12, 10))
    # J: overlap 10 x 8 = 80, union 100 + 100 - 80 = 120.
    assert jaccard(gt, pred).tolist() == [80 / 120]
    # F: outlines are GT rows/cols 9..19 and pred rows 9..19 x cols 11..21 (40 pixels each).
    # Pred top row: cols 11..19 lie on the GT top row, col 20 is next to (9, 19), col 21 is not
    # matched: 10 pixels; bottom row likewise: 10. Pred left column (col 11, rows 10..18) is 2
    # pixels from GT column 9, except rows 10 and 18, next to the GT top/bottom rows: 2 pixels.
    # Pred right column (col 21) is 2 pixels from everything: 0. P = 22/40; by symmetry R = 22/40
    # (GT left column unmatched, GT right column matched at rows 10 and 18), so F = 0.55.
    assert boundary_f(gt, pred).tolist() == [2 * 0.55 * 0.55 / (0.55 + 0.55)]
    assert ref.db_eval_boundary(gt, pred).tolist() == [2 * 0.55 * 0.55 / (0.55 + 0.55)]


def test_square_shifted_by_one_column():
    gt = _frames(_square(10, 10, 10))
    pred = _frames(_square(10, 11, 10))
    assert jaccard(gt, pred).tolist() == [90 / 110]
    # Every outline pixel is within one pixel of the other outline: P = R = 1.
    assert boundary_f(gt, pred).tolist() == [1.0]


def test_empty_and_full_frames():
    empty = np.zeros((40, 40), dtype=bool)
    full = np.ones((40, 40), dtype=bool)
    square = _square(10, 10, 10)
    gt = _frames(empty, square, empty, full, square)
    pred = _frames(empty, empty, square, full, full)
    # empty/empty: J = 1 (empty union), F = 1 (no boundaries: P = R = 1).
    # empty pred: J = 0, F = 0 (P = 1, R = 0).  empty GT: J = 0, F = 0 (P = 0, R = 1).
    # full/full: J = 1 and F = 1, since a full frame has no boundary.
    # full pred vs square: J = 100/1600, F = 0 (the prediction has no boundary: P = 1, R = 0).
    assert jaccard(gt, pred).tolist() == [1.0, 0.0, 0.0, 1.0, 100 / 1600]
    assert boundary_f(gt, pred).tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]


def test_thin_lines():
    # GT: a 1-pixel line on row 20, cols 5..34. Its boundary: row 20 cols 4..34 (col 4: its east
    # neighbour is on) and row 19 cols 4..34 (south/south-east neighbour on): 62 pixels.
    line = np.zeros((40, 40), dtype=bool)
    line[20, 5:35] = True
    down1 = np.roll(line, 1, axis=0)
    down2 = np.roll(line, 2, axis=0)
    gt = _frames(line, line)
    pred = _frames(down1, down2)
    # No overlap at all: J = 0 for both.
    assert jaccard(gt, pred).tolist() == [0.0, 0.0]
    # One row down: pred boundary rows 20-21 lie within one row of GT rows 19-20: F = 1.
    # Two rows down: pred rows 21-22 vs GT rows 19-20: only pred row 21 (31 px) and GT row 20
    # (31 px) match: P = R = 31/62, F = 0.5.
    assert boundary_f(gt, pred).tolist() == [1.0, 0.5]


def test_boundary_tolerance_in_pixels():
    gt = _frames(_square(10, 10, 10))
    pred = _frames(_square(10, 12, 10))
    # With a radius of 2 pixels (bound_th >= 1 is a radius) every outline pixel matches.
    assert boundary_f(gt, pred, bound_th=2).tolist() == [1.0]


# --------------------------------------------------------------------------------------------
# Vectorised vs the per-frame reference (benchmarks/reference_davis.py).
# --------------------------------------------------------------------------------------------

_SIZES = [(6, 480, 854), (5, 37, 53), (4, 101, 99), (7, 64, 64), (3, 1, 17), (3, 17, 1), (2, 2, 2), (3, 1, 1)]


@pytest.mark.parametrize("num_frames, height, width", _SIZES)
@pytest.mark.parametrize("num_lines", [0, 2])
def test_matches_reference_on_random_blobs(num_frames, height, width, num_lines):
    gt, pred = ref.random_blob_masks(
        num_frames, height, width, seed=height * 7 + width + num_lines, num_lines=num_lines, empty_probability=0.2
    )
    assert np.array_equal(jaccard(gt, pred), ref.db_eval_iou(gt, pred))
    assert np.array_equal(boundary_f(gt, pred), ref.db_eval_boundary(gt, pred))
    for frame in range(num_frames):
        assert np.array_equal(boundary_map(gt[frame : frame + 1])[0], ref.seg2bmap(gt[frame]))


@pytest.mark.parametrize("bound_th", [0.008, 0.02, 1, 3, 2.5])
@pytest.mark.parametrize("chunk_frames", [None, 1, 3])
def test_matches_reference_on_noise(bound_th, chunk_frames):
    # Salt-and-pepper masks: boundaries everywhere, touching every frame edge.
    rng = np.random.default_rng(7)
    gt = rng.random((5, 45, 70)) < 0.3
    pred = gt ^ (rng.random(gt.shape) < 0.05)
    pred[1] = False  # one empty prediction
    gt[2] = True  # one full target (no boundary)
    expected = ref.db_eval_boundary(gt, pred, bound_th=bound_th)
    assert np.array_equal(boundary_f(gt, pred, bound_th=bound_th, chunk_frames=chunk_frames), expected)


def test_crop_keeps_boundaries():
    # Objects touching each frame edge and objects in the middle: the crop must not change maps.
    gt, pred = ref.random_blob_masks(9, 50, 60, seed=3, num_lines=0)
    gt[0, -1, 10:20] = True  # on the last row
    pred[1, 5:9, -1] = True  # on the last column
    gt[2, 0, 0] = True
    for chunk in _crop.cropped_chunks(gt, pred, chunk_frames=2):
        full = boundary_map(gt[chunk.frames])
        assert full.sum() == (boundary_map(chunk.gt).sum() if chunk.gt.size else 0)


def test_score_expression_means_and_jf():
    gt, pred = ref.random_blob_masks(6, 60, 80, seed=11)
    score = score_expression(gt, pred)
    j = ref.db_eval_iou(gt, pred).mean()
    f = ref.db_eval_boundary(gt, pred).mean()
    assert (score.j, score.f, score.jf) == (j, f, (j + f) / 2)
    assert score.num_frames == 6
    assert score.robustness is None  # no foreground given
    assert score.accuracy == pytest.approx(np.mean(gt == pred), abs=1e-15)


@pytest.mark.parametrize("chunk_frames", [None, 1, 4])
def test_score_expression_equals_the_separate_metrics(chunk_frames):
    gt, pred = ref.random_blob_masks(9, 48, 70, seed=5, num_lines=1, empty_probability=0.3)
    foreground = gt | np.roll(gt, 9, axis=2)
    score = score_expression(gt, pred, foreground=foreground, chunk_frames=chunk_frames)
    assert score.j == np.mean(jaccard(gt, pred))
    assert score.f == np.mean(boundary_f(gt, pred))
    assert score.accuracy == pixel_accuracy(gt, pred)
    assert score.robustness == robustness(gt, pred, foreground)


# --------------------------------------------------------------------------------------------
# Accuracy and robustness, by hand and against the official (buggy) ReVOS code.
# --------------------------------------------------------------------------------------------


def _ar_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2 frames 4x4. Target: rows 0-1 of cols 0-1 (4 px/frame). Foreground: rows 0-1 (8 px/frame).

    Frame 0: pred = target (no error). Frame 1: pred = target minus 1 pixel plus 2 pixels outside.
    """
    gt = np.zeros((2, 4, 4), dtype=bool)
    gt[:, :2, :2] = True
    foreground = np.zeros_like(gt)
    foreground[:, :2] = True
    pred = gt.copy()
    pred[1, 0, 0] = False
    pred[1, 3, 2:4] = True
    return gt, pred, foreground


def test_accuracy_and_robustness_by_hand():
    gt, pred, foreground = _ar_case()
    # A: 3 wrong pixels of 32.  R: FP = 2 (frame 1), foreground = 16 over both frames.
    assert pixel_accuracy(gt, pred) == 29 / 32
    assert robustness(gt, pred, foreground) == 1 - 2 / 16
    score = score_expression(gt, pred, foreground=foreground)
    assert (score.accuracy, score.robustness) == (29 / 32, 1 - 2 / 16)


def test_robustness_is_clipped_at_zero_and_missing_without_foreground():
    gt, pred, foreground = _ar_case()
    pred[:, 2:] = True  # rows 2-3: 16 false positives
    assert robustness(gt, pred, foreground) == 0.0  # 1 - 16/16
    pred[:, :2, 2:] = True  # 8 more: 1 - 24/16 < 0 is clipped
    assert robustness(gt, pred, foreground) == 0.0
    assert robustness(gt, pred, np.zeros_like(foreground)) is None
    assert score_expression(gt, pred, foreground=np.zeros_like(foreground)).robustness is None


def test_official_accuracy_and_robustness_are_wrong_on_these_inputs():
    gt, pred, foreground = _ar_case()
    # The official script gets GT as uint8 0/1 and predictions as 0/255 PNGs.
    official_a = ref.official_revos_accuracy(gt.astype(np.uint8), pred.astype(np.uint8) * 255)
    official_r = ref.official_revos_robustness(
        gt.astype(np.uint8), pred.astype(np.uint8) * 255, foreground.astype(np.uint8)
    )
    # Official A: correct target pixels count as errors (1 != 255), so only pixels outside both
    # masks are right: 16 - 4 = 12 in frame 0, 16 - (4 + 2) = 10 in frame 1.
    assert official_a == pytest.approx((12 / 16 + 10 / 16) / 2)
    # Official R: each FP counts 255: frame 1 gives max(1 - 510/8, 0) = 0, frame 0 gives 1.
    assert official_r == pytest.approx(0.5)
    assert (pixel_accuracy(gt, pred), robustness(gt, pred, foreground)) == (29 / 32, 0.875)


def test_official_robustness_overlap_underflow():
    # Two target objects overlapping on one pixel: summed GT is 2 there, 1 - 2 wraps to 255 and
    # 255 * 255 wraps to 1, so a correct prediction counts as one "false positive".
    gt_sum = np.zeros((1, 4, 4), dtype=np.uint8)
    gt_sum[0, 0, :2] += 1
    gt_sum[0, 0, 1:3] += 1
    pred = (gt_sum > 0).astype(np.uint8) * 255
    foreground = (gt_sum > 0).astype(np.uint8)
    assert ref.official_revos_robustness(gt_sum, pred, foreground) == pytest.approx(1 - 1 / 3)
    assert robustness(gt_sum > 0, pred > 0, foreground > 0) == 1.0


# --------------------------------------------------------------------------------------------
# Aggregation.
# --------------------------------------------------------------------------------------------


def _scores_table() -> pa.Table:
    return pa.table(
        {
            "type_id": pa.array([0, 0, 1, 2], pa.int8()),
            "j": [0.2, 0.4, 0.9, 0.0],
            "f": [0.4, 0.6, 0.7, 0.0],
            "accuracy": [0.9, 0.7, 0.6, 0.1],
            "robustness": [1.0, None, 0.5, 0.0],
        }
    )


def test_summarize_revos_overall_is_the_mean_of_the_two_splits():
    summary = summarize_revos(_scores_table())
    # referring: J = 0.3, F = 0.5, J&F = 0.4, A = 0.8, R = 1.0 (the null R is skipped)
    # reasoning: J = 0.9, F = 0.7, J&F = 0.8, A = 0.6, R = 0.5
    # overall: J = 0.6 (pooled would be 0.5), F = 0.6, J&F = 0.6, A = 0.7, R = 0.75
    expected = {
        "referring": (2, 0.3, 0.5, 0.4, 0.8, 1.0),
        "reasoning": (1, 0.9, 0.7, 0.8, 0.6, 0.5),
        "overall": (3, 0.6, 0.6, 0.6, 0.7, 0.75),
    }
    for name, values in summary.as_dict().items():
        fields = ("num_expressions", "j", "f", "jf", "accuracy", "robustness")
        got = tuple(values[field] for field in fields)
        assert got == pytest.approx(expected[name], abs=1e-12), name


def test_summarize_mean_uses_every_row():
    table = _scores_table().drop_columns(["type_id"])
    summary = summarize_mean(table)
    assert summary.num_expressions == 4
    assert (summary.j, summary.f) == pytest.approx((1.5 / 4, 1.7 / 4))
    assert summary.jf == pytest.approx((1.5 / 4 + 1.7 / 4) / 2)
    assert summary.robustness == pytest.approx(1.5 / 3)


def test_summaries_without_optional_columns():
    table = pa.table({"type_id": [0, 1], "j": [0.5, 1.0], "f": [0.5, 0.0]})
    summary = summarize_revos(table)
    assert summary.overall.accuracy is None and summary.overall.robustness is None
    assert summary.overall.jf == pytest.approx(0.5)


@pytest.mark.parametrize(
    "table, error, match",
    [
        (pa.table({"type_id": [0, 3], "j": [0.5, 0.5], "f": [0.5, 0.5]}), ValueError, r"found \[3\]"),
        (pa.table({"type_id": [0, 0], "j": [0.5, 0.5], "f": [0.5, 0.5]}), ValueError, "no expression in reasoning"),
        (pa.table({"type_id": [0, 1], "j": [0.5, None], "f": [0.5, 0.5]}), ValueError, "null/NaN 'j'"),
        (pa.table({"type_id": [0, 1], "j": [0.5, 0.5]}), ValueError, r"lacks column\(s\) \['f'\]"),
        (pa.table({"type_id": [0, 1], "j": ["a", "b"], "f": [0.5, 0.5]}), TypeError, "must be numeric"),
    ],
)
def test_summarize_revos_errors(table, error, match):
    with pytest.raises(error, match=match):
        summarize_revos(table)


def test_type_2_rows_may_be_null():
    table = pa.table({"type_id": [0, 1, 2], "j": [0.5, 0.5, None], "f": [0.5, 0.5, None]})
    assert summarize_revos(table).overall.j == 0.5


def test_summaries_reject_pandas_with_a_hint():
    with pytest.raises(TypeError, match="from_pandas"):
        summarize_revos(_scores_table().to_pandas())


# --------------------------------------------------------------------------------------------
# Input errors and docstring examples.
# --------------------------------------------------------------------------------------------


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"gt has shape \(2, 4, 4\) but pred has shape \(2, 4, 5\)"):
        score_expression(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 5), bool))
    with pytest.raises(ValueError, match=r"foreground has shape \(1, 4, 4\)"):
        robustness(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 4), bool), np.zeros((1, 4, 4), bool))


@pytest.mark.parametrize(
    "mask, error, match",
    [
        (np.zeros((2, 4, 4), np.uint8), TypeError, "dtype bool, got uint8"),
        (np.zeros((4, 4), bool), ValueError, r"3-D \(T, H, W\), got shape \(4, 4\)"),
        ([[[True]]], TypeError, "numpy bool array"),
    ],
)
def test_bad_masks(mask, error, match):
    with pytest.raises(error, match=match):
        jaccard(mask, mask)
    with pytest.raises(error, match=match):
        boundary_f(mask, mask)


def test_zero_frames():
    empty = np.zeros((0, 4, 4), bool)
    assert jaccard(empty, empty).shape == (0,)
    assert boundary_f(empty, empty).shape == (0,)
    with pytest.raises(ValueError, match="at least one frame and one pixel"):
        score_expression(empty, empty)
    with pytest.raises(ValueError, match="at least one frame and one pixel"):
        score_expression(np.zeros((2, 0, 4), bool), np.zeros((2, 0, 4), bool))


def test_bad_chunk_frames():
    with pytest.raises(ValueError, match="chunk_frames must be >= 1"):
        boundary_f(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4), bool), chunk_frames=0)


@pytest.mark.parametrize("module", [vrshq.metrics, aggregate, boundary, expression, region, accuracy_robustness])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
