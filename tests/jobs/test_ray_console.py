"""A job's console shows Ray's lines a user can act on: the known unactionable error line is dropped from the
driver's standard error (every other line passes, in order), and a local cluster's auth mode is chosen
explicitly, so Ray does not warn about it."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

_NOISE = ("[2026-01-01 00:00:00,000 E 1 1] core_worker.cc:2465: Actor with class name: 'MapWorker(MapBatches(X))' "
          "has constructor arguments in the object store and max_restarts > 0. If the arguments in the object store "
          "go out of scope or are lost, the actor restart will fail.")


def test_the_unactionable_core_worker_line_is_dropped_and_every_other_line_kept():
    code = (
        "import os, sys\n"
        "from jobs._ray_console import drop_unactionable_ray_errors\n"
        "print('before', file=sys.stderr)\n"
        "drop_unactionable_ray_errors()\n"
        "drop_unactionable_ray_errors()  # idempotent\n"
        f"os.write(2, b'keep 1\\n' + {_NOISE.encode()!r} + b'\\nkeep 2\\npartial ')\n"
        "os.write(2, b'line\\n')\n"
        "print('from python', file=sys.stderr)\n"
        "os.write(2, b'no newline at the end')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "before\nkeep 1\nkeep 2\npartial line\nfrom python\nno newline at the end"


def test_a_local_cluster_gets_the_auth_mode_ray_would_choose_and_a_users_choice_is_kept(monkeypatch):
    import ray._private.authentication.authentication_token_setup as setup
    import ray._private.services as services

    from jobs._ray_console import choose_local_auth_mode

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setattr(services, "canonicalize_bootstrap_address", lambda address, temp_dir=None: None)
    switched = []
    monkeypatch.setattr(setup, "_enable_token_auth", lambda: switched.append(True))
    choose_local_auth_mode(None)  # a new local cluster: token authentication, Ray's default, through Ray's switch
    assert switched == [True]
    monkeypatch.setattr(setup, "_enable_token_auth", lambda: pytest.fail("switched auth despite a set mode"))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    choose_local_auth_mode(None)
    assert os.environ["RAY_AUTH_MODE"] == "disabled"  # the user's choice stays
    monkeypatch.delenv("RAY_AUTH_MODE")
    choose_local_auth_mode("10.0.0.1:6379")  # an explicit address: Ray neither picks nor warns
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.1:8265")
    choose_local_auth_mode(None)
    assert "RAY_AUTH_MODE" not in os.environ


@pytest.mark.slow
def test_a_local_ray_job_prints_no_unactionable_ray_lines(tmp_path):
    import shutil
    import tempfile

    """A job that starts its own local cluster and runs an actor pool: no auth warning, no core worker error."""
    code = (
        "import ray, ray.data\n"
        "from jobs._cli import init_ray\n"
        "init_ray()\n"
        "class Udf:\n"
        "    def __call__(self, batch):\n"
        "        return batch\n"
        "rows = ray.data.range(4).map_batches(Udf, compute=ray.data.ActorPoolStrategy(size=1)).take_all()\n"
        "print('rows', len(rows))\n"
    )
    ray_tmp = tempfile.mkdtemp(prefix="vrc", dir="/tmp")  # short: Ray's socket paths are limited to 107 bytes
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0", HOME=str(tmp_path),
               RAY_TMPDIR=ray_tmp)
    try:
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                timeout=300, env=env)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert result.returncode == 0 and "rows 4" in result.stdout, result.stderr[-3000:]
    console = result.stdout + result.stderr
    assert "Token authentication is" not in console
    assert "constructor arguments in the object store" not in console
    assert " E " not in console.replace("INFO", ""), console[-3000:]
