"""Training that cannot make progress fails fast: a resource check before it starts, a stall watchdog after.

Before: :func:`check_train_fits` refuses a config the cluster can never run. Ray Train's workers hold
their CPUs for the whole run, and the clip-sampling tasks of Ray Data must still fit beside them;
otherwise the workers wait for samples that no task can produce (Ray Data shows the task as
"backpressured" with 0 rows) and the run sits at step 0 forever. ``jobs.infer`` checks the same way
(:func:`pipelines.inference.run.check_cluster_fits`).

After: every worker tells a :class:`ProgressBoard` (a zero-CPU actor, so it is scheduled even on a
full cluster) which stage it is in and at which step; :class:`StallWatchdog`, a driver thread,
ends the run when no worker has changed stage or step for ``stall_timeout_s`` seconds, with a
message that names the stage each worker is stuck in (or says that none ever started).
"""
from __future__ import annotations

import _thread
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["STAGE_DATA", "STAGE_STEP", "STAGE_START", "ProgressBoard", "StallWatchdog", "check_train_fits"]

_LOG = logging.getLogger(__name__)

STAGE_START = "building the model"
STAGE_DATA = "waiting for samples from the clip-sampling stage (Ray Data)"
STAGE_STEP = "running a training step"
STAGE_CHECKPOINT = "writing a checkpoint or validating"


def check_train_fits(cfg: Any, resources: Mapping[str, float]) -> list[str]:
    """Problems when ``cfg``'s workers and a clip-sampling task cannot run at once on a cluster with ``resources``."""
    cpus = float(resources.get("CPU", 0.0))
    needed = cfg.num_workers * cfg.cpus_per_worker + cfg.data.num_cpus_per_task
    problems = []
    if needed > cpus + 1e-9:
        problems.append(
            f"the run needs {needed:g} CPUs at once (num_workers x cpus_per_worker {cfg.num_workers} x "
            f"{cfg.cpus_per_worker:g} for the workers + data.num_cpus_per_task {cfg.data.num_cpus_per_task:g} for "
            f"a clip-sampling task beside them) but the cluster has {cpus:g}: the workers would wait for samples "
            "forever; lower num_workers, cpus_per_worker or data.num_cpus_per_task, or add nodes"
        )
    if cfg.use_gpu and cfg.num_workers > resources.get("GPU", 0.0) + 1e-9:
        problems.append(f"use_gpu=true with num_workers={cfg.num_workers} needs {cfg.num_workers} GPUs but the "
                        f"cluster has {resources.get('GPU', 0.0):g}")
    return problems


class ProgressBoard:
    """Where each worker writes its stage and step (a Ray actor: ``ray.remote(num_cpus=0)(ProgressBoard)``)."""

    def __init__(self) -> None:
        self._ranks: dict[int, tuple[str, int]] = {}
        self._changed = time.monotonic()

    def beat(self, rank: int, stage: str, step: int) -> None:
        if self._ranks.get(rank) != (stage, step):
            self._ranks[rank] = (stage, step)
            self._changed = time.monotonic()

    def snapshot(self) -> tuple[dict[int, tuple[str, int]], float]:
        """``({rank: (stage, step)}, seconds since the last change)``."""
        return dict(self._ranks), time.monotonic() - self._changed


def report_stage(board: Any, rank: int, stage: str, step: int) -> None:
    """Tell the board (if any) where this worker is; never blocks and never fails the worker."""
    if board is None:
        return
    try:
        board.beat.remote(rank, stage, step)
    except Exception:  # noqa: BLE001 - progress reporting must not break training
        _LOG.debug("progress report failed", exc_info=True)


class StallWatchdog:
    """A driver thread that ends the run when the board shows no change for ``timeout_s`` seconds.

    Args:
        board: the :class:`ProgressBoard` actor handle.
        timeout_s: seconds without any worker changing stage or step.
        on_stall: called once with the message; default: interrupt the driver's main thread (the
            caller turns the ``KeyboardInterrupt`` into an error naming :attr:`message`).
        poll_s: how often the board is read.
    """

    def __init__(self, board: Any, timeout_s: float, *, on_stall: Callable[[str], None] | None = None,
                 poll_s: float | None = None):
        self.board = board
        self.timeout_s = float(timeout_s)
        self.message: str | None = None
        self._on_stall = on_stall or (lambda message: _thread.interrupt_main())
        self._poll_s = poll_s if poll_s is not None else min(5.0, max(0.5, self.timeout_s / 10))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vrshq-train-watchdog", daemon=True)
        self._started = time.monotonic()

    def __enter__(self) -> StallWatchdog:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        import ray

        while not self._stop.wait(self._poll_s):
            try:
                ranks, quiet = ray.get(self.board.snapshot.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - a slow board is not a stall of the run
                continue
            quiet = min(quiet, time.monotonic() - self._started)
            if quiet < self.timeout_s:
                continue
            self.message = self._describe(ranks, quiet)
            _LOG.error("%s", self.message)
            self._on_stall(self.message)
            return

    @staticmethod
    def _describe(ranks: Mapping[int, tuple[str, int]], quiet: float) -> str:
        try:
            import ray

            free = {k: v for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
            total = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
            where = f"; cluster {total}, free now {free}"
        except Exception:  # noqa: BLE001
            where = ""
        if not ranks:
            return (f"no progress for {quiet:.0f} s: stalled starting the training workers (none reported; the "
                    f"worker group could not be placed or never started){where}")
        stages = sorted({stage for stage, _ in ranks.values()})
        detail = ", ".join(f"rank {r} at step {s} {stage}" for r, (stage, s) in sorted(ranks.items()))
        return f"no progress for {quiet:.0f} s: stalled {' / '.join(stages)} ({detail}){where}"
