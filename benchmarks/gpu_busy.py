"""GPU busy time from ``nvidia-smi`` samples taken in a background process.

``nvidia-smi --query-gpu=utilization.gpu -lms 100`` prints, every 100 ms, the percentage of the
last sample period during which at least one kernel ran on the GPU. It sees every process on the
GPU, so it also measures the Ray actor's work (which the driver's ``torch.cuda`` cannot). A reader
thread stamps each line with the driver's monotonic clock, so the mean over any time window (for
example the pipeline's steady state, between its first and its last finished video) is known.

Example:
    >>> sampler = GpuBusySampler(gpu_index=0)  # doctest: +SKIP
    >>> with sampler:  # doctest: +SKIP
    ...     start = time.monotonic(); work(); end = time.monotonic()
    >>> sampler.mean_busy(start, end)  # doctest: +SKIP
    93.4
"""
from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["GpuBusySampler", "BusySummary"]


@dataclass(frozen=True)
class BusySummary:
    """Mean utilisation (percent) over a window and how many samples it is based on."""

    mean_percent: float | None
    samples: int


class GpuBusySampler:
    """Samples one GPU's utilisation every ``interval_ms`` while the context is open.

    Args:
        gpu_index: the ``nvidia-smi -i`` index of the GPU, or several (one line per GPU per period;
            summaries then average over the GPUs).
        interval_ms: sampling period (``-lms``).
        executable: the ``nvidia-smi`` command.
        enabled: False for a sampler that never samples (CPU runs).

    ``available`` is False (and every summary empty) when ``nvidia-smi`` is not on the PATH, e.g. on
    CPU-only hosts; the benchmark then reports the GPU busy share as unknown instead of failing.
    """

    def __init__(
        self,
        *,
        gpu_index: int | Sequence[int] = 0,
        interval_ms: int = 100,
        executable: str = "nvidia-smi",
        enabled: bool = True,
    ) -> None:
        indices = [gpu_index] if isinstance(gpu_index, int) else list(gpu_index)
        if not indices or any(not isinstance(i, int) or i < 0 for i in indices):
            raise ValueError(f"gpu_index must be a GPU index or a non-empty list of them, got {gpu_index!r}")
        if not isinstance(interval_ms, int) or interval_ms < 10:
            raise ValueError(f"interval_ms must be an int >= 10, got {interval_ms!r}")
        self._command = [
            executable, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
            "-lms", str(interval_ms), "-i", ",".join(str(i) for i in indices),
        ]
        self.available = enabled and shutil.which(executable) is not None
        self.gpu_indices = tuple(indices)
        self._samples: list[tuple[float, int, float]] = []  # (stamp, GPU index, percent)
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self.error: str | None = None
        if not self.available:
            self.error = f"{executable} not found on PATH" if enabled else "disabled (no GPU)"

    def __enter__(self) -> GpuBusySampler:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        if not self.available or self._process is not None:
            return
        try:
            self._process = subprocess.Popen(
                self._command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1
            )
        except OSError as exc:
            self.available, self.error = False, f"cannot start {self._command[0]}: {exc}"
            return
        self._thread = threading.Thread(target=self._read, name="gpu-busy-sampler", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None  # noqa: S101 - internal invariant
        position = 0  # nvidia-smi prints one line per GPU per period, in -i order
        for line in self._process.stdout:
            stamp = time.monotonic()
            gpu = self.gpu_indices[position % len(self.gpu_indices)]
            position += 1
            try:
                value = float(line.strip())
            except ValueError:
                continue  # "[N/A]"
            with self._lock:
                self._samples.append((stamp, gpu, value))

    def stop(self) -> None:
        """Stop the ``nvidia-smi`` process this sampler started (only that one)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def samples(self, gpus: Sequence[int] | None = None) -> list[tuple[float, float]]:
        """``(time.monotonic() stamp, percent)`` samples of ``gpus`` (default: all sampled GPUs)."""
        with self._lock:
            rows = list(self._samples)
        return [(t, v) for t, g, v in rows if gpus is None or g in gpus]

    def mean_busy(self, start: float, end: float, *, gpus: Sequence[int] | None = None) -> BusySummary:
        """Mean utilisation in ``[start, end]`` (``time.monotonic()`` values) over ``gpus`` (default: all)."""
        values = [v for t, v in self.samples(gpus) if start <= t <= end]
        if not values:
            return BusySummary(mean_percent=None, samples=0)
        return BusySummary(mean_percent=sum(values) / len(values), samples=len(values))
