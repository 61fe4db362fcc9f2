"""``jobs.train`` fails fast when it cannot make progress.

The training command ``--num-workers 2`` on a 2-CPU machine used to sit at step 0 for good: the two
workers held both CPUs and the clip-sampling task could never start. Now the job refuses such a
config right after Ray starts (exit 2, naming the numbers), and a run that still makes no progress
(here: a clip-sampling task that needs more CPUs than are left) ends after ``stall_timeout_s`` with a
message naming the stalled stage.
"""
from __future__ import annotations

import time

import pytest

import jobs.train as train
from pipelines.training.train_config import ModelSpec, SamplingConfig, TrainConfig, TrainDataConfig
from pipelines.training.train_guard import STAGE_DATA, check_train_fits
from tests.ray_cluster import ray_head, ray_on_head  # noqa: F401 - pytest fixtures
from vrshq.data import write_synthetic_revos


def _cfg(root: str, storage: str, **overrides) -> TrainConfig:
    data = dict(root=root, split="train", sampling=SamplingConfig(min_frames=3, max_frames=3, max_expressions=1))
    data.update(overrides.pop("data", {}))
    base = dict(storage_path=storage, name="guard", model=ModelSpec(preset="tiny", seed=0),
                data=TrainDataConfig(**data), max_steps=2, checkpoint_every=2)
    base.update(overrides)
    return TrainConfig(**base)


def test_a_config_whose_workers_leave_no_cpu_for_the_data_is_refused():
    cfg = _cfg("/d", "/s", num_workers=2)  # the README's command: 2 workers x 1 CPU + a 1-CPU sampling task
    problems = check_train_fits(cfg, {"CPU": 2.0})
    assert len(problems) == 1 and "needs 3 CPUs" in problems[0] and "has 2" in problems[0]
    assert check_train_fits(_cfg("/d", "/s", num_workers=2, cpus_per_worker=0.5, data={"num_cpus_per_task": 0.5}),
                            {"CPU": 2.0}) == []
    assert "GPUs" in check_train_fits(_cfg("/d", "/s", use_gpu=True), {"CPU": 8.0})[0]


@pytest.fixture(scope="module")
def two_cpu_ray(ray_on_head):  # noqa: F811
    """This process as a driver of the session's 2-CPU test head (the CI machine's size)."""
    yield ray_on_head


@pytest.fixture(scope="module")
def train_data(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("guard") / "data"
    write_synthetic_revos(str(root), num_videos=2, num_frames=4, height=32, width=32, seed=3, split="train")
    return str(root)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_readme_training_command_on_two_cpus_is_refused_in_seconds(two_cpu_ray, train_data, tmp_path, capsys):
    start = time.monotonic()
    code = train.main(["--storage-path", str(tmp_path / "train"), "--data.root", train_data, "--data.split", "train",
                       "--model.preset", "tiny", "--num-workers", "2", "--max-steps", "20", "--checkpoint-every", "5"])
    err = capsys.readouterr().err
    assert code == train.EXIT_USAGE, err
    assert "needs 3 CPUs" in err and "num_workers" in err
    assert time.monotonic() - start < 60


@pytest.mark.long
@pytest.mark.timeout(300)
def test_a_run_without_progress_ends_naming_the_stalled_stage(two_cpu_ray, train_data, tmp_path):
    from pipelines.training.run import TrainingStalledError, run_training

    # 1 worker x 1 CPU, and a clip-sampling task of 1.5 CPUs that can never run beside it
    cfg = _cfg(train_data, str(tmp_path / "train"), cpus_per_worker=1.0, data={"num_cpus_per_task": 1.5},
               stall_timeout_s=60.0, max_failures=0)
    start = time.monotonic()
    with pytest.raises(TrainingStalledError) as info:
        run_training(cfg)
    assert "no progress for" in str(info.value) and STAGE_DATA in str(info.value), str(info.value)
    assert time.monotonic() - start < 240


@pytest.mark.slow
def test_the_watchdog_names_the_stage_each_worker_is_stuck_in(two_cpu_ray):
    import ray

    from pipelines.training.train_guard import STAGE_STEP, ProgressBoard, StallWatchdog, report_stage

    board = ray.remote(num_cpus=0)(ProgressBoard).remote()
    fired: list[str] = []
    with StallWatchdog(board, 2.0, on_stall=fired.append, poll_s=0.2) as watchdog:
        for step in range(5):  # steps keep coming: no stall
            report_stage(board, 0, STAGE_STEP, step)
            report_stage(board, 1, STAGE_DATA, step)
            time.sleep(0.5)
        assert not fired
        deadline = time.monotonic() + 20
        while not fired and time.monotonic() < deadline:  # then nothing changes
            time.sleep(0.2)
    assert fired == [watchdog.message]
    assert "no progress for" in fired[0] and "rank 1 at step 4 " + STAGE_DATA in fired[0]
    assert "rank 0 at step 4 " + STAGE_STEP in fired[0]
