"""Time spent in each named stage of ``VrshqModel.segment_video``, without host syncs inside the call.

A profiler shows the same ranges but costs time itself; a roofline needs the plain split. On CUDA each
stage records a start and an end event on the current stream, and :meth:`StageTimer.seconds` reads them
once, after the caller has synchronised (a stage's time is then the stream's time from the moment its
first kernel could start to the end of its last one). On a CPU the host clock is exact.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch

__all__ = ["StageTimer"]


class StageTimer:
    """Accumulates seconds per stage name; set as ``VrshqModel.stage_timer`` to time ``segment_video``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pending: list[tuple[str, object, object]] = []
        self._seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name`` (stages may repeat; their times add up)."""
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._pending.append((name, start, end))
        else:
            began = time.perf_counter()
            try:
                yield
            finally:
                self.add(name, time.perf_counter() - began)

    def add(self, name: str, seconds: float) -> None:
        """Add host-measured seconds to a stage (work outside ``segment_video``: decode, RLE, writers)."""
        self._seconds[name] = self._seconds.get(name, 0.0) + seconds

    def seconds(self) -> dict[str, float]:
        """Seconds per stage so far, in first-seen order (waits for the recorded CUDA events)."""
        for name, start, end in self._pending:
            end.synchronize()
            self.add(name, start.elapsed_time(end) / 1e3)
        self._pending.clear()
        return dict(self._seconds)
