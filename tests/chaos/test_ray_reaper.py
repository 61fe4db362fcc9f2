"""A local Ray cluster started by a job's driver ends with it, even when the driver is SIGKILLed.

Ray ties its core processes to the driver, but its dashboard agent and runtime-env agent used to
outlive a SIGKILLed driver. ``jobs._cli.init_ray`` starts :mod:`pipelines.ray_reaper`, which stops
them by PID. The driver here is a real ``python`` process that calls ``init_ray()`` (a local cluster,
no RAY_ADDRESS), runs one task, lists its descendants and waits to be killed.
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.chaos.figures import FIGURES

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[2]

DRIVER = """
import json, os, sys, time
import psutil
from jobs._cli import init_ray
init_ray()
import ray

@ray.remote(num_cpus=0)
def pid():
    return os.getpid()

ray.get(pid.remote())
deadline = time.monotonic() + 60
while time.monotonic() < deadline:  # the agents start after the raylet; wait until both are up
    names = " ".join(" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True))
    if "DashboardAgent" in names and "RuntimeEnvAgent" in names:
        break
    time.sleep(0.5)
time.sleep(2)
procs = [p for p in psutil.Process().children(recursive=True)]
print(json.dumps([[p.pid, p.create_time(), " ".join(p.cmdline())[:160]] for p in procs]), flush=True)
time.sleep(600)
"""


def _running(pid: int, created: float) -> bool:
    try:
        process = psutil.Process(pid)
        return process.create_time() == created and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_sigkilled_driver_leaves_no_ray_process(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_AUTH_MODE="disabled")
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    procs: list = []
    try:
        line = driver.stdout.readline()
        assert line, "the driver printed no process list"
        procs = json.loads(line)
        names = " ".join(p[2] for p in procs)
        assert "raylet" in names and "DashboardAgent" in names and "RuntimeEnvAgent" in names, names
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
        FIGURES.add("faults", "local-Ray driver SIGKILL (reaped)", 1)
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and any(_running(pid, created) for pid, created, _ in procs):
            time.sleep(0.5)
        left = [name for pid, created, name in procs if _running(pid, created)]
        assert not left, f"Ray processes outlived their SIGKILLed driver: {left}"
    finally:
        if driver.poll() is None:
            driver.kill()
        for pid, created, _ in procs:  # never leave anything of this test behind, whatever happened
            if _running(pid, created):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
