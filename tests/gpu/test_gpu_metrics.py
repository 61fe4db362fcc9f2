"""J and F as tensor ops on a CUDA device equal the per-frame DAVIS reference bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.reference_davis import db_eval_boundary, db_eval_iou, random_blob_masks
from vrshq.metrics.device import score_masks_tensor

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("shape,bound_th", [((40, 480, 854), 0.008), ((12, 720, 1280), 0.008), ((9, 61, 40), 3.5)])
def test_device_scores_equal_the_reference(shape, bound_th):
    gt, pred = random_blob_masks(*shape, seed=shape[0], num_lines=1, empty_probability=0.2)
    gt[0] = True
    j, f = score_masks_tensor(torch.from_numpy(gt).cuda(), torch.from_numpy(pred).cuda(), bound_th=bound_th)
    assert np.array_equal(j.cpu().numpy(), db_eval_iou(gt, pred))
    assert np.array_equal(f.cpu().numpy(), db_eval_boundary(gt, pred, bound_th=bound_th))
