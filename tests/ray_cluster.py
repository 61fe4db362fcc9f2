"""A real local Ray head for tests: ``ray start --head`` on 127.0.0.1 with its own ports and temp dir.

Several test sessions (and other users of the machine) may run Ray at the same time, so the head
gets free ports for every service, its own ``--temp-dir``, and is stopped by the PIDs it started
(the ``ray start --block`` process and its descendants) -- never ``ray stop``, which kills every Ray
process of the machine.

Usage::

    head = start_ray_head(num_cpus=2)
    try:
        head.submit_job(["python", "-m", "jobs.infer", ...], working_dir=".")
    finally:
        head.stop()
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "RayHead",
    "acquire_shared_head",
    "cluster_node_ports",
    "free_port",
    "ray_driver",
    "ray_head",
    "ray_on_head",
    "release_shared_head",
    "start_ray_head",
]

_VENV_BIN = Path(sys.executable).parent
_BASE_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cluster_node_ports() -> dict[str, int]:
    """Free ports for every fixed-port service of one ``ray.cluster_utils.Cluster`` node (``add_node`` kwargs).

    Ray's defaults (dashboard 8265, dashboard agent 52365, ...) are taken on a machine where a Ray
    cluster already runs, and a node that finds its port taken logs errors or fails to start.
    """
    names = ("dashboard_port", "dashboard_agent_listen_port", "metrics_agent_port", "metrics_export_port",
             "runtime_env_agent_port", "ray_client_server_port")
    ports: dict[str, int] = {}
    for name in names:
        port = free_port()
        while port in ports.values():
            port = free_port()
        ports[name] = port
    return ports


def _ephemeral_port_start() -> int:
    """The first port the kernel hands to outgoing connections (Linux: ip_local_port_range; else 32768)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            return int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _free_port_range(size: int) -> tuple[int, int]:
    """A range of ``size`` ports that are all free now (random start, so parallel heads differ).

    Below the ephemeral range: there, any outgoing connection of the test session (gRPC, S3, HTTP) may
    hold a worker's port for a moment, and a worker that cannot bind its port dies before its actor
    starts ("actor died during initialization").
    """
    rng = random.Random(os.getpid() ^ time.time_ns())
    top = max(20000 + 2 * size, min(60000, _ephemeral_port_start()))
    for _ in range(200):
        start = rng.randrange(20000, top - size)
        try:
            for port in range(start, start + size, max(1, size // 10)):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return start, start + size - 1
    raise RuntimeError("no free port range found for Ray workers")


@dataclass
class RayHead:
    """A running Ray head started by :func:`start_ray_head`."""

    process: subprocess.Popen
    temp_dir: str
    gcs_port: int
    dashboard_port: int
    env: dict[str, str]
    log_path: str
    _stopped: bool = field(default=False, repr=False)

    @property
    def address(self) -> str:
        """GCS address for ``ray.init(address=...)``."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """Address for ``ray job submit --address``."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def job_env(self) -> dict[str, str]:
        """Environment for ``ray job ...`` CLI calls (and ``ray.init`` clients) of this head."""
        return {**os.environ, **self.env, "RAY_ADDRESS": self.dashboard_url}

    def submit_job(
        self,
        entrypoint: list[str],
        *,
        working_dir: str | None = None,
        runtime_env: dict[str, Any] | None = None,
        timeout: float = 300,
        no_wait: bool = False,
        submission_id: str | None = None,
    ) -> subprocess.CompletedProcess:
        """``ray job submit [--working-dir DIR] [--runtime-env-json ...] -- <entrypoint>`` on this head.

        Returns the completed CLI process (its stdout holds the job's logs unless ``no_wait``).
        """
        cmd = [str(_VENV_BIN / "ray"), "job", "submit", "--address", self.dashboard_url]
        if working_dir is not None:
            cmd += ["--working-dir", working_dir]
        if runtime_env:
            cmd += ["--runtime-env-json", json.dumps(runtime_env)]
        if submission_id:
            cmd += ["--submission-id", submission_id]
        if no_wait:
            cmd += ["--no-wait"]
        cmd += ["--", *entrypoint]
        return subprocess.run(cmd, env=self.job_env(), capture_output=True, text=True, timeout=timeout)

    def job_cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """``ray job <args> --address <dashboard>`` (status, stop, logs)."""
        cmd = [str(_VENV_BIN / "ray"), "job", *args, "--address", self.dashboard_url]
        return subprocess.run(cmd, env=self.job_env(), capture_output=True, text=True, timeout=timeout)

    def _descendants(self) -> list[Any]:
        import psutil

        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 5) -> None:
        """Terminate the head's processes (by PID: ``ray start`` and its descendants), remove its temp dir.

        A test cluster needs no graceful shutdown: everything gets SIGTERM at once, then SIGKILL.
        """
        import psutil

        from pipelines.ray_reaper import reap

        if self._stopped:
            return
        self._stopped = True
        try:
            reap([psutil.Process(self.process.pid)], grace_s=timeout)  # ``ray start`` and its descendants
        except psutil.NoSuchProcess:
            pass
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        if not os.environ.get("VRSHQ_KEEP_RAY_LOGS"):
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def start_ray_head(*, num_cpus: int = 2, timeout: float = 120, smoke_job: bool = True, attempts: int = 3) -> RayHead:
    """Start ``ray start --head --block`` on 127.0.0.1 and wait until jobs can be submitted.

    A port picked as free can be taken by another process before Ray binds it; then ``ray start``
    exits at once and a fresh set of ports is tried (``attempts`` times).

    Args:
        num_cpus: the head's logical CPUs.
        timeout: seconds to wait for the dashboard and the job agent.
        smoke_job: submit a trivial job first, so the agent is proven ready for the tests.

    Raises:
        RuntimeError: when the head does not come up (its log tail is in the message).
    """
    for attempt in range(attempts):
        try:
            return _start_ray_head_once(num_cpus=num_cpus, timeout=timeout, smoke_job=smoke_job)
        except _PortTaken:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


class _PortTaken(RuntimeError):
    pass


def _start_ray_head_once(*, num_cpus: int, timeout: float, smoke_job: bool) -> RayHead:
    # Short path: Ray's unix sockets live under it (107-byte limit).
    temp_dir = tempfile.mkdtemp(prefix="vrh", dir="/tmp")
    min_worker, max_worker = _free_port_range(200)
    ports: dict[str, int] = {}
    for name in ("port", "dashboard-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
                 "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
                 "runtime-env-agent-port"):
        port = free_port()
        while min_worker <= port <= max_worker or port in ports.values():
            port = free_port()
        ports[name] = port
    env = {
        **_BASE_ENV,
        "PATH": f"{_VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # jobs' `python` is the venv's
        "RAY_DEDUP_LOGS": "0",
        # No token authentication on this loopback-only test head. Ray >= 2.5x turns it on by default
        # with the machine-wide ~/.ray/auth_token, but a client reads its auth mode and token once per
        # process (at `import ray`), so a pytest process that imported ray earlier cannot switch to
        # this head's token; with auth off, every client of the tests connects whatever it imported.
        "RAY_AUTH_MODE": "disabled",
    }
    cmd = [
        str(_VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
        f"--temp-dir={temp_dir}", f"--num-cpus={num_cpus}", "--num-gpus=0", "--include-dashboard=true",
        "--dashboard-host=127.0.0.1", "--disable-usage-stats",
        f"--min-worker-port={min_worker}", f"--max-worker-port={max_worker}",
        "--object-store-memory=300000000",
        *[f"--{name}={port}" for name, port in ports.items()],
    ]
    log_path = os.path.join(temp_dir, "ray_start.log")
    log = open(log_path, "w")  # noqa: SIM115 - closed when the process exits
    process = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    head = RayHead(process=process, temp_dir=temp_dir, gcs_port=ports["port"],
                   dashboard_port=ports["dashboard-port"], env=env, log_path=log_path)
    deadline = time.monotonic() + timeout
    try:
        # Poll with the CLI itself: "the dashboard answers" is not "jobs can be submitted".
        while head.job_cli("list", timeout=30).returncode != 0:
            if process.poll() is not None:
                error = _PortTaken if "port" in head.log_tail().lower() else RuntimeError
                raise error(f"ray start exited with {process.returncode}:\n{head.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Ray dashboard not up after {timeout} s:\n{head.log_tail()}")
            time.sleep(1.0)
        while smoke_job:
            result = head.submit_job(["python", "-c", "import ray"], timeout=max(10.0, deadline - time.monotonic()))
            if result.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"ray job submit does not work after {timeout} s:\n{result.stdout[-2000:]}\n"
                                   f"{result.stderr[-2000:]}\n{head.log_tail()}")
            time.sleep(1.0)
    except BaseException:
        head.stop()
        raise
    return head


_SHARED: dict[str, Any] = {"head": None, "users": 0}


def acquire_shared_head(*, num_cpus: int = 2) -> RayHead:
    """The test session's one Ray head (started on first use), shared by every test directory's fixture."""
    if _SHARED["head"] is None:
        _SHARED["head"] = start_ray_head(num_cpus=num_cpus)
    _SHARED["users"] += 1
    return _SHARED["head"]


def release_shared_head() -> None:
    """Drop one user of the shared head; the last one stops it."""
    _SHARED["users"] -= 1
    if _SHARED["users"] <= 0 and _SHARED["head"] is not None:
        _SHARED["head"].stop()
        _SHARED["head"] = None


@pytest.fixture(scope="session")
def ray_head():
    """A real ``ray start --head`` on 127.0.0.1 (own ports and temp dir), stopped by PID at the end.

    Import this fixture (and :func:`ray_on_head`) into a conftest or test module to use it.
    """
    head = acquire_shared_head(num_cpus=2)
    yield head
    release_shared_head()


@contextlib.contextmanager
def ray_driver(head: RayHead, *, runtime_env: dict[str, Any] | None = None) -> Iterator[RayHead]:
    """This process as a Ray driver of ``head`` (``ray.init(address=...)``) for the ``with`` block.

    ``runtime_env`` (optional) is passed to ``ray.init``: e.g. ``{"env_vars": {...}}`` for every worker.
    A fixture that needs one wraps this; :func:`ray_on_head` is the plain one.
    """
    import ray

    if ray.is_initialized():
        ray.shutdown()
    from ray._private import ray_constants

    with pytest.MonkeyPatch.context() as patch:
        for key in ("RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
            patch.setenv(key, head.env[key])
        # With RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 Ray keeps "127.0.0.1" instead of swapping in the
        # machine's IP (where this head does not listen). Ray reads it at import; scripts/test.sh exports
        # it, and this covers a pytest run started without it.
        patch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
        ray.init(address=head.address, logging_level="WARNING", log_to_driver=False, runtime_env=runtime_env)
        try:
            yield head
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def ray_on_head(ray_head):
    """This process as a Ray driver of ``ray_head`` (``ray.init(address=...)``), shut down after the module.

    For a driver with a ``runtime_env``, use :func:`ray_driver` in a fixture of your own.
    """
    with ray_driver(ray_head) as head:
        yield head
