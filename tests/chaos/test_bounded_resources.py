"""Bounded resources: a 5,000-frame video (32x32 JPEGs) and a 4K video (3840x2160, 3 frames) through
``run_inference`` on the local Ray head, with the peak RSS of the driver and of every Ray worker
process (frame readers, the model actor, the writer) sampled every 50 ms and recorded in the figures.

Bounds asserted (generous, so CI noise cannot flake them, yet far below what materialising a
video at full size for every expression would take):
* the driver grows by < 100 MiB after a warm-up job (it never sees frames, only one summary row per video);
* no Ray worker of the pipeline exceeds 2 GiB RSS (the tiny model keeps SAM2 features of every frame:
  about 0.2 MiB per 32x32 frame, see FIGURES.md).
"""
from __future__ import annotations

import re
import threading
import time

import numpy as np
import psutil
import pytest

from pipelines.inference.config import ComputeConfig, InferenceConfig
from pipelines.inference.run import run_inference
from pipelines.inference.manifest import records_to_manifest
from pipelines.io.writers import read_output
from tests.chaos.figures import FIGURES
from tests.ray_cluster import ray_head, ray_on_head  # noqa: F401 - pytest fixtures
from vrshq.data import ExpressionRecord, VideoRecord

pytestmark = pytest.mark.slow

MIB = 2**20
SMALL = ComputeConfig(num_actors=1, num_cpus_per_actor=1.0, read_num_cpus=0.25, writer_num_cpus=0.25, videos_per_file=1)


class PeakRss:
    """Samples RSS of this process and of the head's descendants (Ray workers) in a thread."""

    def __init__(self, head, interval: float = 0.05):
        self._head, self._interval = head, interval
        self.driver = 0
        self.workers: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            self.driver = max(self.driver, me.memory_info().rss)
            for proc in self._head._descendants():
                try:
                    name = " ".join(proc.cmdline()[:1])
                    if not name.startswith("ray::"):
                        continue
                    name = re.sub(r"\)\.\w+$", ")", name.removeprefix("ray::"))  # MapWorker(X).submit -> MapWorker(X)
                    if "MapBatches" not in name and "read_frames" not in name:
                        continue  # Ray's own service actors
                    self.workers[name] = max(self.workers.get(name, 0), proc.memory_info().rss)
                except psutil.Error:
                    continue
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _write_video(folder, *, num_frames: int, height: int, width: int) -> VideoRecord:
    import cv2

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    names = tuple(f"{i:05d}" for i in range(num_frames))
    for i, name in enumerate(names):
        frame = np.roll(base, i, axis=1)
        cv2.imwrite(str(folder / f"{name}.jpg"), frame)
    expressions = tuple(ExpressionRecord(exp_id=str(i), text=t, obj_ids=(), anno_ids=(), type_id=0)
                        for i, t in enumerate(["the moving square", "the thing on the left"]))
    return VideoRecord(dataset="revos", split="valid", video_id=folder.name, frame_names=names,
                       frames_uri=str(folder), video_uri=None, height=height, width=width,
                       expressions=expressions, mask_dict_uri=None, foreground_uri=None)


@pytest.mark.parametrize("name,num_frames,height,width", [("long5000", 5000, 32, 32), ("uhd4k", 3, 2160, 3840)])
def test_long_and_large_videos_have_bounded_memory(ray_on_head, tmp_path, name, num_frames, height, width):  # noqa: F811
    import pyarrow.parquet as pq

    video = _write_video(tmp_path / name, num_frames=num_frames, height=height, width=width)
    manifest = tmp_path / "m.parquet"
    pq.write_table(records_to_manifest([video]), manifest)
    cfg = InferenceConfig(out=str(tmp_path / "out"), manifest=str(manifest), preset="tiny", seed=1,
                          compute=SMALL, code_version="chaos")
    # Warm-up on a 2-frame video: the driver's imports (torch, the model config) and Ray Data's
    # first-use state are not what scales with the video.
    small = _write_video(tmp_path / "warmup", num_frames=2, height=32, width=32)
    pq.write_table(records_to_manifest([small]), tmp_path / "w.parquet")
    assert run_inference(InferenceConfig(out=str(tmp_path / "warm"), manifest=str(tmp_path / "w.parquet"),
                                         preset="tiny", seed=1, compute=SMALL, code_version="chaos")).ok
    start_driver = psutil.Process().memory_info().rss
    started = time.perf_counter()
    with PeakRss(ray_on_head) as peak:
        summary = run_inference(cfg)
    seconds = time.perf_counter() - started
    assert summary.ok and summary.masks_rows == num_frames * 2, summary
    masks = read_output(cfg.out, "masks", columns=["exp_id", "frame_index", "height", "width"])
    assert masks.num_rows == num_frames * 2
    assert set(masks.column("height").to_pylist()) == {height} and set(masks.column("width").to_pylist()) == {width}
    driver_growth = (peak.driver - start_driver) / MIB
    worst = max(peak.workers.items(), key=lambda kv: kv[1])
    FIGURES.set(f"peak memory {name} ({num_frames} frames {height}x{width}, 2 expressions)",
                f"driver +{driver_growth:.0f} MiB (peak RSS {peak.driver / MIB:.0f} MiB); Ray workers peak RSS: "
                + ", ".join(f"{k} {v / MIB:.0f} MiB" for k, v in sorted(peak.workers.items()))
                + f"; {seconds:.0f} s")
    FIGURES.add("jobs completed", f"bounded resources ({name})")
    assert driver_growth < 100, f"driver grew {driver_growth:.0f} MiB"
    assert worst[1] < 2 * 2**30, f"{worst[0]} peaked at {worst[1] / MIB:.0f} MiB"
