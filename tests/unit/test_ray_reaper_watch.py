"""The reaper's watch loop without Ray: it finds processes started below the watched ones while the driver
runs (Ray's workers and agents come after ``ray.init``) and ends them all when the driver is gone."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import psutil

from pipelines.ray_reaper import _children_by_parent, _descendants, watch

# A node process that starts a worker a moment in, the way a raylet starts workers after the reaper.
_START_WORKER = ("import subprocess, sys, time; time.sleep(0.5); "
                 "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); ")
NODE = _START_WORKER + "time.sleep(60)"
#: The same, exiting a second after it started its worker (which then outlives it).
NODE_THAT_EXITS = _START_WORKER + "time.sleep(1.0)"


def _wait_for_child(process: psutil.Process) -> psutil.Process:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = process.children()
        if children:
            return children[0]
        time.sleep(0.1)
    raise AssertionError("the node process started no worker")


def _gone(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_descendants_come_from_one_pass_over_the_process_table():
    node = subprocess.Popen([sys.executable, "-c", NODE])
    try:
        worker = _wait_for_child(psutil.Process(node.pid))
        children = _children_by_parent()
        assert node.pid in children[psutil.Process().pid]
        assert _descendants({node.pid: psutil.Process(node.pid)}, children) == [worker.pid]
    finally:
        for process in psutil.Process(node.pid).children(recursive=True):
            process.kill()
        node.kill()
        node.wait()


def test_watch_reaps_a_process_that_outlived_its_parent_when_the_driver_ends():
    # The node starts a worker after the watch began, then exits: only the watch loop can know the worker
    # (an orphan now, as Ray's agents are when the raylet goes), and it must end it with the driver.
    node = subprocess.Popen([sys.executable, "-c", NODE_THAT_EXITS])
    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    reaped: list[int] = []
    thread = threading.Thread(target=lambda: reaped.append(watch(driver.pid, [node.pid], interval=0.1)))
    thread.start()
    worker = None
    try:
        worker = _wait_for_child(psutil.Process(node.pid))
        node.wait(30)
        assert not _gone(worker)  # outlived its parent
        driver.kill()
        driver.wait()
        thread.join(30)
        assert reaped == [1]
        assert _gone(worker)
    finally:
        if driver.poll() is None:
            driver.kill()
        thread.join(30)
        if worker is not None and not _gone(worker):
            worker.kill()
