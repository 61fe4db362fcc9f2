"""The inference dataset spreads a small input over its pools: small blocks, one video's frames each.

Ray Data merges a task's outputs into blocks of up to 128 MiB and an actor pool takes whole blocks, so the
frames of every video of a small dataset reached one model actor while the others idled.
``pipelines.inference.dataset._small_blocks`` is what ``build_dataset`` starts its dataset with; here the
same stage shapes (a reading task stage, then an actor pool, ``batch_size=1``) run on stub UDFs, with the
demo's frame size (16 frames at 64x64, 196 KB) and work items of a few bytes.
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

from pipelines.inference.dataset import MAX_BLOCK_BYTES, _small_blocks
from tests.ray_cluster import ray_head, ray_on_head  # noqa: F401 - pytest fixtures

pytestmark = pytest.mark.slow

VIDEOS = 12


def _read(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Stands for ``read_frames_batch``: one video in, its frames out."""
    return {"video": batch["video"], "frames": np.zeros((len(batch["video"]), 16, 64, 64, 3), np.uint8)}


class _Segment:
    """Stands for ``SegmentActor``: records which actor process took each video."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(0.3)  # a model call: long enough that an idle second actor takes the next block
        return {"video": batch["video"], "pid": np.full(len(batch["video"]), os.getpid())}


def _pipeline(small_blocks: bool):
    import ray.data
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    # One input block holding every video, as a manifest slice is.
    ds = ray.data.from_items([{"video": i} for i in range(VIDEOS)], override_num_blocks=1)
    if small_blocks:
        ds = _small_blocks(ds)
    read = ds.map_batches(_read, batch_size=1, num_cpus=0.25, compute=TaskPoolStrategy(size=2))
    segmented = read.map_batches(_Segment, batch_size=1, num_cpus=0.5, compute=ActorPoolStrategy(size=2))
    return read, segmented


def test_every_video_is_a_block_of_its_own_and_both_actors_segment(ray_on_head):  # noqa: F811
    assert 16 * 64 * 64 * 3 > MAX_BLOCK_BYTES  # one demo video's frames fill a block
    read, segmented = _pipeline(small_blocks=True)
    assert read.materialize().num_blocks() == VIDEOS
    rows = segmented.take_all()
    assert sorted(r["video"] for r in rows) == list(range(VIDEOS))
    assert len({r["pid"] for r in rows}) == 2, "one model actor segmented every video"


def test_without_it_the_small_input_stays_one_block_on_one_actor(ray_on_head):  # noqa: F811
    read, segmented = _pipeline(small_blocks=False)
    assert read.materialize().num_blocks() == 1
    rows = segmented.take_all()
    assert sorted(r["video"] for r in rows) == list(range(VIDEOS))
    assert len({r["pid"] for r in rows}) == 1
