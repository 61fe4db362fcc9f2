"""The README's "Try it on a local Ray cluster" commands, run word for word.

The section has two bash blocks: the first terminal (environment, token authentication, ``ray start --head
--block``) and the second (environment, ``RAY_ADDRESS``, two ``ray job submit`` calls). The slow test runs them as
a new user would, changing only what the README says a user picks: the head's ports and ``--temp-dir``, and the
output folder ``/tmp/vrshq-try``. Two things stand in for the user's machine:

* ``HOME`` is a fresh folder, so ``ray get-auth-token --generate`` writes the token there and not into the
  developer's ``~/.ray``;
* where the checkout has no ``.venv`` (a developer running pytest from another environment), ``source
  .venv/bin/activate`` activates the environment running this test instead.

The head is stopped as the README says, with Ctrl-C (SIGINT to its process group), and then by the PIDs it
started, never with ``ray stop``, which would stop every Ray on the machine.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.ray_cluster import free_port

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Try it on a local Ray cluster"
#: Ray's default ports, as the README's `ray start` line spells them out (the user may pick others).
DEFAULT_PORTS = {"port": 6379, "dashboard-port": 8265, "ray-client-server-port": 10001,
                 "dashboard-agent-listen-port": 52365}
README_TEMP_DIR = "/tmp/vrshq-ray"
README_OUT = "/tmp/vrshq-try"


def readme_blocks() -> list[str]:
    """The bash blocks of the README's local-cluster section, in order."""
    text = (ROOT / "README.md").read_text()
    assert SECTION in text, f"README.md has no {SECTION!r} section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def commands(block: str) -> list[str]:
    """The commands of a block, with backslash-continued lines joined."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_readme_says_where_ray_runs_and_how_authentication_is_set():
    head, client = (commands(block) for block in readme_blocks())
    for block in (head, client):
        assert block[0] == "source .venv/bin/activate", "ray and its jobs must run in the project's environment"
        assert any(re.search(r"\bexport\b.*\bRAY_AUTH_MODE=token\b", cmd) for cmd in block), block
    assert head[-1].startswith("ray start --head --block "), head
    assert any(cmd.startswith("ray get-auth-token --generate") for cmd in head), head
    for name, port in DEFAULT_PORTS.items():
        assert f"--{name}={port}" in head[-1], f"the head's --{name} is spelled out for users who must change it"
    assert f"--temp-dir={README_TEMP_DIR}" in head[-1]
    submits = [cmd for cmd in client if cmd.startswith("ray job submit")]
    assert [s.split(" -- ", 1)[1].split()[2] for s in submits] == ["jobs.demo", "jobs.infer"], submits
    assert any(f"RAY_ADDRESS=http://127.0.0.1:{DEFAULT_PORTS['dashboard-port']}" in cmd for cmd in client), client


def _substitute(text: str, ports: dict[str, int], temp_dir: str, out: str, activate: str) -> str:
    for name, port in DEFAULT_PORTS.items():
        text = text.replace(f"--{name}={port}", f"--{name}={ports[name]}")
    text = text.replace(f"127.0.0.1:{DEFAULT_PORTS['dashboard-port']}", f"127.0.0.1:{ports['dashboard-port']}")
    text = text.replace(f"--temp-dir={README_TEMP_DIR}", f"--temp-dir={temp_dir}")
    text = text.replace(README_OUT, out)
    return text.replace("source .venv/bin/activate", f"source {activate}")


def _stop(process: subprocess.Popen) -> None:
    """Ctrl-C, as the README says, then whatever is left by the PIDs this head started."""
    import psutil

    try:
        procs = psutil.Process(process.pid).children(recursive=True) + [psutil.Process(process.pid)]
    except psutil.NoSuchProcess:
        procs = []
    try:
        os.killpg(process.pid, signal.SIGINT)
    except ProcessLookupError:
        pass
    _, alive = psutil.wait_procs(procs, timeout=60)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


@pytest.mark.slow
def test_readme_local_cluster_commands_run_word_for_word(tmp_path):
    import pyarrow.parquet as pq

    head_block, client_block = readme_blocks()
    activate = ROOT / ".venv" / "bin" / "activate"
    if not activate.exists():
        activate = Path(sys.prefix) / "bin" / "activate"
    if not activate.exists():
        pytest.skip("neither the checkout's .venv nor this test's environment has bin/activate")
    ports: dict[str, int] = {}
    for name in DEFAULT_PORTS:
        port = free_port()
        while port in ports.values():
            port = free_port()
        ports[name] = port
    # Short paths: Ray's unix sockets live under the temp dir (107-byte limit).
    temp_dir = tempfile.mkdtemp(prefix="vrt", dir="/tmp")
    out = tempfile.mkdtemp(prefix="vrshq-try", dir="/tmp")
    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("RAY_ADDRESS", "RAY_AUTH", "VIRTUAL_ENV"))}
    env["HOME"] = str(home)
    sub = lambda text: _substitute(text, ports, temp_dir, out, str(activate))  # noqa: E731

    head_log = open(tmp_path / "head.log", "w")  # noqa: SIM115 - closed below
    head = subprocess.Popen(["bash", "-c", "set -e\n" + sub(head_block)], cwd=ROOT, env=env, stdout=head_log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        client = commands(sub(client_block))
        prefix = "\n".join(cmd for cmd in client if not cmd.startswith("ray job submit"))
        for submit in (cmd for cmd in client if cmd.startswith("ray job submit")):
            deadline = time.monotonic() + 180
            while True:
                result = subprocess.run(["bash", "-c", f"set -e\n{prefix}\n{submit}"], cwd=ROOT, env=env,
                                        capture_output=True, text=True, timeout=900)
                logs = result.stdout + result.stderr
                # The README: while the head is starting, submit again. A job that was submitted is never retried.
                if result.returncode == 0 or "submitted successfully" in logs or time.monotonic() > deadline:
                    break
                assert head.poll() is None, (tmp_path / "head.log").read_text()[-4000:]
                time.sleep(3)
            assert result.returncode == 0, f"{submit}\n{logs[-6000:]}\n{(tmp_path / 'head.log').read_text()[-3000:]}"
        demo_scores = pq.read_table(Path(out) / "run" / "scores")
        cluster_scores = pq.read_table(Path(out) / "cluster-run" / "scores")
        assert demo_scores.num_rows > 0
        # The infer job segmented exactly the demo's two videos and their expressions, with the same model.
        key = lambda t: sorted(zip(t.column("video_id").to_pylist(), t.column("exp_id").to_pylist()))  # noqa: E731
        assert len(set(demo_scores.column("video_id").to_pylist())) == 2
        assert key(cluster_scores) == key(demo_scores)
        assert set(cluster_scores.column("model").to_pylist()) == {"tiny:tiny-synthetic"}
    finally:
        _stop(head)
        head_log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
