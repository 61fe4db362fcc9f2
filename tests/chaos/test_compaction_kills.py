"""``jobs.compact`` SIGKILLed at seeded random steps (a file written, the journal written, a file moved
or deleted), then rerun: every table must hold exactly the rows it held before, row by row; ``infer``'s
own recovery (``finish_compaction``, run under its lock) finishes an interrupted compaction too.

A compacted output scores identically: ``jobs.evaluate`` on the masks before and after compaction
gives the same scores and summary.
"""
from __future__ import annotations

import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys

import pytest

from pipelines.io.compaction import (
    CHAOS_KILL_STEP_ENV,
    _Steps,
    compact_output,
    compact_partition,
    finish_compaction,
    partitions,
)
from pipelines.io.writers import list_parts
from tests.chaos.figures import FIGURES
from tests.synthetic_output import all_rows, make_output

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[2]
ARGS = ["--target-bytes", "3000", "--row-group-rows", "40"]


def _compact(output: pathlib.Path, kill_step: int | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(CHAOS_KILL_STEP_ENV, None)
    if kill_step is not None:
        env[CHAOS_KILL_STEP_ENV] = str(kill_step)
    return subprocess.run([sys.executable, "-m", "jobs.compact", "--out", str(output), *ARGS], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """An output of 40 videos in 20 small parts per table (and one orphan masks part, left alone), its rows,
    and the number of mutation steps one compaction takes."""
    root = tmp_path_factory.mktemp("compact")
    output = root / "out"
    make_output(str(output), videos=40, per_file=2)
    make_output(str(output), videos=6, per_file=3, dataset="mevis", split="valid_u", orphan=False, seed=5)
    probe = root / "probe"
    shutil.copytree(output, probe)
    want = all_rows(str(probe))
    counting = _Steps()
    for dataset, split in partitions(str(probe)):
        compact_partition(str(probe), dataset, split, target_bytes=3000, row_group_rows=40, _steps=counting)
    assert all_rows(str(probe)) == want
    return output, want, counting.count


def test_compact_killed_at_random_steps_then_rerun(source, tmp_path):
    output, want, total = source
    assert total > 20, total
    rng = random.Random(31)
    kills = sorted(rng.sample(range(1, total + 1), 8))
    for i, step in enumerate(kills):
        out = tmp_path / f"out{i}"
        shutil.copytree(output, out)
        killed = _compact(out, step)
        assert killed.returncode == -signal.SIGKILL, (step, killed.returncode, killed.stderr[-2000:])
        assert (out / "_lock.json").exists()  # a killed job leaves its lock; the rerun takes it over (dead pid)
        rerun = _compact(out, None)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        got = all_rows(str(out))
        for table in want:
            lost = len(set(map(repr, want[table])) - set(map(repr, got[table])))
            duplicated = len(got[table]) - len(set(map(repr, got[table])))
            FIGURES.add("rows lost", f"jobs.compact killed ({table})", lost)
            FIGURES.add("duplicate rows", f"jobs.compact killed ({table})", duplicated)
            assert got[table] == want[table], f"{table} differs after a kill at step {step} of {total}"
        assert {p.batch_id for t in want for p in list_parts(str(out), t) if not p.batch_id.startswith("compact-")
                } == {"orphan"}
        assert not any(p.is_file() for p in (out / "_compact").rglob("*"))
    FIGURES.add("faults", "jobs.compact SIGKILL at a seeded step, then rerun", len(kills))


def test_infer_recovery_finishes_a_killed_compaction(source, tmp_path):
    output, want, total = source
    out = tmp_path / "out"
    shutil.copytree(output, out)
    step = total - 3  # after the commit point: the journal is committed, sources not all deleted yet
    assert _compact(out, step).returncode == -signal.SIGKILL
    assert finish_compaction(str(out)) == 1  # what infer runs under its lock before planning
    assert all_rows(str(out)) == want


def test_a_compacted_output_scores_identically(tmp_path):
    import pyarrow as pa

    from jobs.evaluate import EvaluateConfig, evaluate
    from pipelines.inference.config import DatasetConfig
    from pipelines.io.rle import encode_masks
    from pipelines.io.writers import write_batch
    from schemas import MASKS_SCHEMA, SCORES_SCHEMA
    from vrshq.data import load_expression_masks, load_mask_dict, read_revos, write_synthetic_revos

    root = tmp_path / "ReVOS"
    write_synthetic_revos(str(root), num_videos=4, num_frames=4, height=32, width=40, seed=2, split="valid")
    videos = read_revos(str(root), split="valid")
    mask_dict = load_mask_dict(videos[0].mask_dict_uri)
    output = tmp_path / "run"
    for n, video in enumerate(videos):  # one part per (video, expression), as small as infer's parts get
        for k, expression in enumerate(video.expressions):
            masks = load_expression_masks(video, expression, mask_dict=mask_dict)
            if k % 2:
                masks = masks[:, ::-1]  # some wrong predictions, so scores differ between expressions
            rows = [{"dataset": video.dataset, "split": video.split, "video_id": video.video_id,
                     "exp_id": expression.exp_id, "frame_index": t, "frame_name": name, "height": masks.shape[1],
                     "width": masks.shape[2], "rle_counts": counts, "score": 0.0, "is_keyframe": t == 0,
                     "run_id": "r", "model": "m", "code_version": "c"}
                    for t, (name, counts) in enumerate(zip(video.frame_names, encode_masks(masks)))]
            scores = [{"dataset": video.dataset, "split": video.split, "video_id": video.video_id,
                       "exp_id": expression.exp_id, "expression": expression.text, "type_id": expression.type_id,
                       "expression_type": "referring", "num_frames": video.num_frames, "num_objects": 1,
                       "run_id": "r", "model": "m", "code_version": "c"}]
            write_batch(str(output), {"masks": pa.Table.from_pylist(rows[::-1], schema=MASKS_SCHEMA),
                                      "scores": pa.Table.from_pylist(scores, schema=SCORES_SCHEMA)},
                        batch_id=f"v{n}-e{k}")
    dataset = DatasetConfig(format="revos", root=str(root), split="valid")
    before = evaluate(EvaluateConfig(dataset=dataset, masks=str(output), out=str(tmp_path / "eval1"), run_id="e"))
    parts = len(list_parts(str(output), "masks"))
    compact_output(str(output), target_bytes=2000, row_group_rows=10)
    assert 1 < len(list_parts(str(output), "masks")) < parts
    after = evaluate(EvaluateConfig(dataset=dataset, masks=str(output), out=str(tmp_path / "eval2"), run_id="e"))
    assert before.expressions_scored == after.expressions_scored > 0 and before.errors == after.errors == 0
    assert before.table == after.table
    from pipelines.io.writers import read_output

    columns = ["video_id", "exp_id", "j", "f", "jf", "accuracy"]
    assert (read_output(str(tmp_path / "eval1"), "scores", columns=columns).sort_by("video_id").to_pylist()
            == read_output(str(tmp_path / "eval2"), "scores", columns=columns).sort_by("video_id").to_pylist())
