"""Ray Train end to end on CPU: 2 DDP workers (gloo) train the tiny preset on synthetic videos in the
S3 test server, one worker is killed mid-run and the run resumes from its checkpoint, the exported
model loads for inference, and a stopped run continues when run again."""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import tempfile

import numpy as np
import pytest

from pipelines.training.train_config import (
    ModelSpec,
    OptimConfig,
    SamplingConfig,
    TrainConfig,
    TrainDataConfig,
    ValidationConfig,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    """In-process Ray with 2 CPUs and its own temp dir (never ``ray stop``).

    Token authentication off, as on the session's shared test head: a local ``ray.init`` otherwise
    turns it on for this process (``RAY_AUTH_MODE=token``), and later drivers of the shared head in
    the same pytest process then lose their actors at start.
    """
    import ray

    if ray.is_initialized():
        ray.shutdown()
    with tempfile.TemporaryDirectory(prefix="ray-train-test-") as tmp, pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=2, _temp_dir=tmp, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def s3_data(s3_server):
    from vrshq.data import write_synthetic_revos

    bucket = s3_server.make_bucket()
    opts = s3_server.storage_options
    write_synthetic_revos(f"{bucket}/train", num_videos=3, num_frames=6, height=48, width=64, seed=1,
                          split="train", storage_options=opts)
    write_synthetic_revos(f"{bucket}/valid", num_videos=1, num_frames=5, height=48, width=64, seed=2,
                          split="valid", storage_options=opts)
    return bucket, opts


@dataclasses.dataclass(frozen=True)
class _KillOnce:
    """Fault injection (a ``run_training`` step hook): rank 1 (or 0 alone) exits after ``step`` while ``marker``
    does not exist (it is created first), as a worker lost mid-run."""

    marker: str
    step: int = 3

    def __call__(self, step: int, rank: int, world: int) -> None:
        if step != self.step or rank != (1 if world > 1 else 0) or os.path.exists(self.marker):
            return
        with open(self.marker, "w") as f:
            f.write(f"worker rank {rank} killed itself at step {step}\n")
        os._exit(1)


def _config(bucket: str, opts: dict, **overrides) -> TrainConfig:
    base = dict(
        storage_path=f"{bucket}/runs",
        name="tiny-ddp",
        storage_options=opts,
        model=ModelSpec(preset="tiny", object_weight=0.5, seed=0),
        optim=OptimConfig(warmup_steps=2, sam2_lr=1e-4, text_lr=1e-3),
        data=TrainDataConfig(
            root=f"{bucket}/train", split="train", num_cpus_per_task=0.25,
            sampling=SamplingConfig(min_frames=3, max_frames=4, max_expressions=2),
        ),
        validation=ValidationConfig(every_steps=2, root=f"{bucket}/valid", split="valid", max_videos=1),
        max_steps=4,
        checkpoint_every=2,
        num_workers=2,
        cpus_per_worker=0.5,
        max_failures=1,
    )
    base.update(overrides)
    return TrainConfig(**base)


def _read_csv(fs, path):
    with fs.open(path, "r") as f:
        return list(csv.DictReader(io.StringIO(f.read())))


def test_killed_worker_resumes_and_a_stopped_run_continues(local_ray, s3_data, tmp_path, s3_server):
    from pipelines.inference.config import InferenceConfig
    from pipelines.inference.model_loader import build_model
    from pipelines.training.run import ResumableTrainDataset, TrainingError, run_training
    from vrshq.data import load_frames, read_revos

    bucket, opts = s3_data
    fs = s3_server.filesystem()
    marker = tmp_path / "killed"
    cfg = _config(bucket, opts)

    result = run_training(cfg, on_step=_KillOnce(str(marker)))

    # the worker of rank 1 died after step 3 (first attempt only) ...
    assert marker.read_text().startswith("worker rank 1 killed itself at step 3")
    # ... and the group restarted from the step-2 checkpoint and finished the 4 steps
    assert result.step == 4 and result.resumed_from is None
    assert result.metrics["step"] == 4 and result.metrics["attempt_start_step"] == 2
    run = f"{bucket}/runs/tiny-ddp"
    assert result.checkpoint_uri == f"{run}/step-00000004"
    state = json.loads(fs.cat(f"{run}/step-00000004/train_state.json"))
    assert state["step"] == 4 and state["next_sample_id"] >= 8  # 4 steps x 2 workers x 1 clip consumed
    # a worker-group (re)start streams the samples after the run folder's newest data position
    records = read_revos(f"{bucket}/train", split="train", storage_options=opts)
    stream = ResumableTrainDataset(cfg, records, start_sample=0, num_samples=3)
    assert stream.start_position() == state["next_sample_id"]
    ids = {int(r["sample_id"]) for r in stream().take_all()}
    assert ids and ids <= set(range(state["next_sample_id"], state["next_sample_id"] + 3))
    rows = _read_csv(fs, f"{run}/metrics.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]  # history of step 1-2 kept, 3 redone once
    assert all(float(r["loss"]) > 0 and float(r["clips_per_s"]) > 0 for r in rows)
    for step in (2, 4):  # validation J&F beside the checkpoints and in the run's validation folder
        beside = json.loads(fs.cat(f"{run}/step-{step:08d}/validation.json"))
        assert beside["step"] == step and 0 <= beside["jf"] <= 1 and beside["num_expressions"] >= 1
        assert json.loads(fs.cat(f"{run}/validation/step-{step:08d}.json")) == beside
    assert {"model.safetensors", "optimizer.pt", "train_state.json"} <= {
        p.rsplit("/", 1)[-1] for p in fs.ls(f"{run}/step-00000002")
    }

    # the exported model is what jobs.infer loads, and it segments a video
    assert result.final_uri == f"{run}/final"
    model = build_model(InferenceConfig(out=str(tmp_path / "o"), manifest="m.parquet", checkpoint=result.final_uri,
                                        storage_options=opts, device="cpu"))
    video = read_revos(f"{bucket}/valid", split="valid", storage_options=opts)[0]
    frames = load_frames(video, storage_options=opts)
    masks = model.segment_video(frames, [video.expressions[0].text])[0].masks
    assert masks.shape == frames.shape[:3] and masks.dtype == np.bool_

    # a fresh run under the same name is refused; with resume it continues from step 4 to 6
    with pytest.raises(TrainingError, match="already holds checkpoints"):
        run_training(_config(bucket, opts, resume=False, max_steps=6), on_step=_KillOnce(str(marker)))
    more = run_training(_config(bucket, opts, max_steps=6, validation=ValidationConfig()), on_step=_KillOnce(str(marker)))
    assert more.resumed_from == f"{run}/step-00000004"
    assert more.step == 6 and more.metrics["attempt_start_step"] == 4
    assert [int(r["step"]) for r in _read_csv(fs, f"{run}/metrics.csv")] == [1, 2, 3, 4, 5, 6]
    later = json.loads(fs.cat(f"{run}/step-00000006/train_state.json"))
    assert later["next_sample_id"] > state["next_sample_id"]  # the data position moved on
