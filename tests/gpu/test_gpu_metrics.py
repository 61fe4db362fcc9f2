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


@pytest.mark.parametrize("shape", [(40, 480, 854), (33, 720, 1280)])
def test_actor_scoring_from_rle_equals_score_expression(shape):
    """What the inference actor does on its GPU (``compute.score_on = "actor"``): the ground truth decoded there
    from its RLE strings, scored chunk by chunk, reduces to ``vrshq.metrics.score_expression`` bit for bit."""
    from pipelines.inference.device_scoring import ground_truth_chunk
    from vrshq.data.masks import encode_rle
    from vrshq.data.records import ExpressionRecord, VideoRecord
    from vrshq.metrics import score_expression, score_from_frames
    from vrshq.metrics.device import ExpressionScorer

    gt, pred = random_blob_masks(*shape, seed=shape[0], num_lines=1, empty_probability=0.2)
    gt[0] = True  # its RLE starts with a zero-length run
    num, height, width = shape
    mask_dict = {"0": [encode_rle(m) if m.any() else None for m in gt]}
    expression = ExpressionRecord(exp_id="0", text="t", obj_ids=(0,), anno_ids=(0,), type_id=0)
    video = VideoRecord(dataset="d", split="s", video_id="v", frame_names=tuple(map(str, range(num))),
                        frames_uri="-", video_uri=None, height=height, width=width, expressions=(expression,))
    pred_cuda = torch.from_numpy(pred).cuda()
    scorer = ExpressionScorer(shape)
    for start in range(0, num, 16):
        frames = range(start, min(start + 16, num))
        chunk, valid = ground_truth_chunk(video, expression, mask_dict, (height, width), frames, pred_cuda.device)
        assert chunk.is_cuda and bool(valid) and np.array_equal(chunk.cpu().numpy(), gt[start : frames.stop])
        scorer.add(chunk, pred_cuda[start : frames.stop])
    frames = scorer.result()
    assert score_from_frames(frames) == score_expression(gt, pred)
    assert frames.mean_target_area == float(gt.mean())
