"""vrshq.metrics.device (J and F as tensor ops) equals the per-frame DAVIS reference bit for bit.

On the CPU here; ``tests/gpu/test_gpu_metrics.py`` runs the same comparison on a CUDA device."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.reference_davis import db_eval_boundary, db_eval_iou, random_blob_masks
from vrshq.metrics import boundary_map, score_expression, score_from_frames
from vrshq.metrics.device import (
    ExpressionScorer,
    boundary_f_tensor,
    boundary_map_tensor,
    jaccard_tensor,
    score_masks_tensor,
)


@pytest.mark.parametrize("shape,bound_th,lines", [((12, 48, 85), 0.008, 1), ((9, 61, 40), 3.5, 2),
                                                  ((6, 33, 33), 2.0, 0), ((5, 120, 213), 0.02, 1)])
def test_equal_to_reference(shape, bound_th, lines):
    gt, pred = random_blob_masks(*shape, seed=sum(shape), num_lines=lines, empty_probability=0.25)
    gt[0] = True  # a full frame: no boundary at all
    pred[1] = pred[1] | gt[1]
    gt_t, pred_t = torch.from_numpy(gt), torch.from_numpy(pred)
    assert np.array_equal(boundary_map_tensor(gt_t).numpy(), boundary_map(gt))
    j = jaccard_tensor(gt_t, pred_t).numpy()
    f = boundary_f_tensor(gt_t, pred_t, bound_th=bound_th).numpy()
    assert np.array_equal(j, db_eval_iou(gt, pred))
    assert np.array_equal(f, db_eval_boundary(gt, pred, bound_th=bound_th))
    j2, f2 = score_masks_tensor(gt_t, pred_t, bound_th=bound_th, chunk_frames=4)
    assert np.array_equal(j2.numpy(), j) and np.array_equal(f2.numpy(), f)


def test_bad_input():
    with pytest.raises(ValueError, match="one shape"):
        jaccard_tensor(torch.zeros(2, 3, 4, dtype=torch.bool), torch.zeros(2, 4, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        boundary_f_tensor(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))


@pytest.mark.parametrize("radius", [1.0, 5.0, 12.0, 2.5])
def test_dilation_equals_cv2(radius):
    """Both dilation paths (centred runs of an integer-radius disk; pooled runs otherwise) equal cv2."""
    import cv2

    from vrshq.metrics.boundary import disk_footprint
    from vrshq.metrics.device import _dilate

    rng = np.random.default_rng(int(radius * 10))
    maps = rng.random((3, 57, 91)) < 0.02
    maps[1, 0, :] = True  # touches the frame's edge
    footprint = disk_footprint(radius)
    expected = np.stack([cv2.dilate(m.astype(np.uint8), footprint) > 0 for m in maps])
    got = _dilate(torch.from_numpy(maps), torch.from_numpy(footprint)).numpy()
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("numpy_on_cpu", [False, True])
@pytest.mark.parametrize("shape,chunk", [((13, 48, 85), 4), ((7, 61, 40), 7), ((5, 30, 31), 1)])
def test_expression_scorer_reduces_to_score_expression_bit_for_bit(shape, chunk, numpy_on_cpu):
    """Chunks scored as the actor scores them give exactly ``score_expression``'s J, F, J&F, A, R and area
    (tensor operations, or vrshq.metrics as on a CPU device)."""
    gt, pred = random_blob_masks(*shape, seed=3 * sum(shape), num_lines=1, empty_probability=0.3)
    gt[0] = True
    pred[2] = False
    rng = np.random.default_rng(sum(shape))
    foreground = gt | (rng.random(shape) < 0.05)
    scorer = ExpressionScorer(shape, numpy_on_cpu=numpy_on_cpu)
    for start in range(0, shape[0], chunk):
        scorer.add(torch.from_numpy(gt[start : start + chunk]), torch.from_numpy(pred[start : start + chunk]))
    frames = scorer.result()
    for fg in (None, foreground):
        want = score_expression(gt, pred, foreground=fg)
        got = score_from_frames(frames, foreground_pixels=None if fg is None else int(np.count_nonzero(fg)))
        assert got == want  # dataclass equality: every float bit-identical
    assert frames.mean_target_area == float(gt.mean())
    assert (frames.mismatches, frames.false_positives, frames.target_pixels) == (
        np.count_nonzero(gt ^ pred), np.count_nonzero(pred & ~gt), np.count_nonzero(gt))


def test_expression_scorer_refuses_chunks_that_do_not_fit():
    scorer = ExpressionScorer((3, 4, 5))
    with pytest.raises(ValueError, match="does not fit"):
        scorer.add(torch.zeros(2, 4, 6, dtype=torch.bool), torch.zeros(2, 4, 6, dtype=torch.bool))
    scorer.add(torch.zeros(2, 4, 5, dtype=torch.bool), torch.zeros(2, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="2 of 3 frames"):
        scorer.result()
    with pytest.raises(ValueError, match="does not fit"):
        scorer.add(torch.zeros(2, 4, 5, dtype=torch.bool), torch.zeros(2, 4, 5, dtype=torch.bool))
