"""End a local Ray cluster's processes with the driver that started it, even when the driver is SIGKILLed.

``ray.init()`` without an address starts a one-machine cluster owned by the driver. Ray ties its
core processes to the driver (kernel fate sharing), but the agents they start (dashboard agent,
runtime-env agent) can outlive a driver killed with SIGKILL, holding ports and memory. So a job
that starts a local cluster also starts this reaper (:func:`start_reaper`): a small process in its
own session that watches the driver, remembers the PIDs of the Ray processes (the node's own
processes, whose PIDs Ray reports, and their descendants, refreshed every ``interval`` seconds),
and when the driver is gone terminates every remembered process that still runs, by PID (a PID
counts only with its original start time, so a reused PID is never hit). Nothing else on the
machine is touched: no ``ray stop``, no process names.

    python -m pipelines.ray_reaper <driver_pid> <ray_pid> [<ray_pid> ...]
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence

__all__ = ["local_ray_pids", "reap", "start_reaper", "watch"]


def local_ray_pids() -> list[int]:
    """PIDs of the processes of the Ray node this driver started (empty when it only connected)."""
    import ray._private.worker as worker

    node = getattr(worker, "_global_node", None)
    if node is None or getattr(node, "connect_only", False):
        return []
    return sorted({process.pid for _, process in node.live_processes()})


def start_reaper(ray_pids: Sequence[int], *, driver_pid: int | None = None) -> subprocess.Popen | None:
    """Start the reaper for ``ray_pids`` (None when there is nothing to watch)."""
    if not ray_pids:
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.ray_reaper", str(driver_pid or os.getpid()), *map(str, ray_pids)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # not in the driver's process group: a signal to the group spares it
        close_fds=True,
    )


def _alive(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def reap(processes: Iterable, *, grace_s: float = 3.0) -> int:
    """Terminate ``processes`` (psutil) and their current descendants, then kill what is left; returns the count."""
    import psutil

    targets = {}
    for process in processes:
        if not _alive(process):
            continue
        targets[process.pid] = process
        try:
            for child in process.children(recursive=True):
                targets.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass
    for process in targets.values():
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(targets.values()), timeout=grace_s)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
    return len(targets)


def watch(driver_pid: int, ray_pids: Sequence[int], *, interval: float = 0.5) -> int:
    """Remember the Ray processes until the driver is gone, then reap them; returns how many were reaped."""
    import psutil

    remembered: dict[int, psutil.Process] = {}

    def remember(pids: Iterable[int]) -> None:
        for pid in pids:
            if pid in remembered or pid == os.getpid():
                continue
            try:
                remembered[pid] = psutil.Process(pid)  # psutil keeps the start time: a reused PID is not it
            except psutil.NoSuchProcess:
                pass

    remember(ray_pids)
    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        driver = None
    while driver is not None and _alive(driver):
        remember(_descendants(remembered, _children_by_parent()))
        time.sleep(interval)
    return reap(remembered.values())


def _children_by_parent() -> dict[int, list[int]]:
    """Every process's children, from one pass over the process table.

    ``psutil.Process.children(recursive=True)`` makes that pass itself, once per call: asking it for each
    of a node's ~25 processes, twice a second, took 40-80 ms of CPU a tick (5-10% of a core, 4-9
    CPU-seconds of a one-minute demo on two cores); one pass a tick takes about 5 ms.
    """
    import psutil

    children: dict[int, list[int]] = {}
    for process in psutil.process_iter(["ppid"]):
        if process.info["ppid"] is not None:
            children.setdefault(process.info["ppid"], []).append(process.pid)
    return children


def _descendants(remembered: dict, children: dict[int, list[int]]) -> list[int]:
    """PIDs below the remembered processes that still run (a dead one's PID may be another's now)."""
    found: list[int] = []
    stack = [pid for pid, process in remembered.items() if _alive(process)]
    while stack:
        for child in children.get(stack.pop(), ()):
            found.append(child)
            stack.append(child)
    return found


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python -m pipelines.ray_reaper <driver_pid> <ray_pid> [<ray_pid> ...]")
    watch(int(sys.argv[1]), [int(pid) for pid in sys.argv[2:]])
