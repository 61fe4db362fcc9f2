"""Shared test fixtures: a local S3 server (moto) and a small synthetic ReVOS dataset.

``s3_server`` starts one moto server per session on 127.0.0.1 at a free port; tests create their
own bucket with ``s3_server.make_bucket()`` so they never see each other's objects. s3fs caches
filesystem instances (and their directory listings) per process: the caches are cleared after
every test so a listing made by one test cannot hide files written by the next.
"""
from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# The test heads run without token authentication, and so does every Ray client of this process: Ray
# reads the mode when it is initialised, and a job run in this process that starts a local cluster (the
# demo) would otherwise switch it to tokens (jobs._ray_console.choose_local_auth_mode). What a test still
# leaves behind is undone after each test (``_ray_auth_mode_stays_disabled``).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3Server:
    """A running moto S3 server.

    Attributes:
        endpoint_url: ``http://127.0.0.1:<port>``.
        storage_options: fsspec/s3fs options reaching it (``url_to_fs(uri, **storage_options)``).
    """

    endpoint_url: str
    storage_options: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.storage_options = {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": self.endpoint_url},  # region: AWS_DEFAULT_REGION (a region_name here
            # would make s3fs send LocationConstraint=us-east-1 on mkdir, which S3 rejects)
        }

    def filesystem(self):
        """A fresh ``s3fs.S3FileSystem`` on this server (no cached instance, so no stale listings);
        Ray Data accepts it as ``filesystem=`` (it wraps it in ``pyarrow.fs.PyFileSystem``), and so
        does pyarrow."""
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options)

    def arrow_filesystem(self):
        """The same filesystem as a ``pyarrow.fs.FileSystem`` (for pyarrow.parquet / pyarrow.dataset)."""
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        return PyFileSystem(FSSpecHandler(self.filesystem()))

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a unique name by default) and return its URI ``s3://<name>``."""
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        self.filesystem().mkdir(name)
        return f"s3://{name}"


#: Markers of tests that only run when ``-m`` names them (too long for every CI run).
_ON_DEMAND_MARKERS = ("fuzz", "long")


def pytest_collection_modifyitems(config, items):
    """Skip ``fuzz``/``long`` tests unless the ``-m`` expression names their marker, and tests marked ``gpu``
    where torch sees no CUDA device (CI's CPU machines; on a GPU host ``bash scripts/gpu_tests.sh`` runs them)."""
    selected = config.getoption("-m") or ""
    for item in items:
        for marker in _ON_DEMAND_MARKERS:
            if marker in item.keywords and marker not in selected:
                item.add_marker(pytest.mark.skip(reason=f"on demand: select with -m {marker}"))
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run bash scripts/gpu_tests.sh on a GPU host)")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 (random port) for the whole session, with AWS_* set to "testing"."""
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as patch:
        for key, value in _AWS_ENV.items():
            patch.setenv(key, value)
        patch.delenv("AWS_PROFILE", raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield S3Server(endpoint_url=f"http://{host}:{port}")
        finally:
            server.stop()


#: Tests after which this process's Ray had switched to token authentication (reset each time).
AUTH_MODE_SWITCHES: list[str] = []


@pytest.fixture(autouse=True)
def _ray_auth_mode_stays_disabled(request):
    """After each test, put this process's Ray back to no token authentication, token cache included.

    Ray keeps the mode in its C++ config, read when it is initialised, and the token in a process-wide
    cache that its gRPC servers check once it holds one. A test that lets Ray pick the mode of a new local
    cluster (``ray.init`` with ``RAY_AUTH_MODE`` unset, or Ray's ``_enable_token_auth``) or that merely asks
    whether a token exists (``AuthenticationTokenLoader.has_token``, which loads ``~/.ray/auth_token``)
    leaves this process's driver rejecting its test head's raylet (``InvalidAuthToken`` in the raylet's
    log) and every later driver losing its actors. Both are undone here; a mode switch is recorded in
    :data:`AUTH_MODE_SWITCHES`.
    """
    yield
    if "ray._raylet" not in sys.modules:
        return
    from ray._raylet import AuthenticationMode, AuthenticationTokenLoader, Config, get_authentication_mode

    if os.environ.get("RAY_AUTH_MODE") != "disabled" or get_authentication_mode() != AuthenticationMode.DISABLED:
        AUTH_MODE_SWITCHES.append(request.node.nodeid)
        os.environ["RAY_AUTH_MODE"] = "disabled"
        Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def pytest_terminal_summary(terminalreporter):
    if AUTH_MODE_SWITCHES:
        terminalreporter.write_line(f"Ray token authentication switched on (and reset) by: {AUTH_MODE_SWITCHES}")


@pytest.fixture(autouse=True)
def _clear_s3fs_caches():
    """Clear s3fs's instance cache after each test (only if a test imported s3fs)."""
    yield
    s3fs = sys.modules.get("s3fs")
    if s3fs is not None:
        s3fs.S3FileSystem.clear_instance_cache()


# Seed 8 gives every expression kind (referring, group, fastest, static, moving, hides_behind,
# covers, no_target) within 4 videos of 6 frames.
_SYNTHETIC_REVOS_ARGS: dict[str, Any] = dict(num_videos=4, num_frames=6, height=64, width=96, seed=8, split="valid")


@pytest.fixture(scope="session")
def synthetic_revos_args() -> dict[str, Any]:
    """Arguments of ``write_synthetic_revos`` for the session's dataset (to rebuild it elsewhere, e.g. on S3)."""
    return dict(_SYNTHETIC_REVOS_ARGS)


@pytest.fixture(scope="session")
def synthetic_revos_info(tmp_path_factory, synthetic_revos_args):
    """:class:`vrshq.data.SyntheticRevosInfo` of a small synthetic ReVOS dataset on local disk (with mp4s)."""
    from vrshq.data import write_synthetic_revos

    root = tmp_path_factory.mktemp("synthetic_revos")
    return write_synthetic_revos(os.fspath(root), write_mp4=True, **synthetic_revos_args)


@pytest.fixture(scope="session")
def synthetic_revos_local(synthetic_revos_info) -> Path:
    """Path of the small synthetic ReVOS dataset (``read_revos(path, split="valid")`` reads it).

    4 videos of 6 frames of 64x96, all expression types, ``videos/<video_id>.mp4`` next to
    ``JPEGImages``; details in the ``synthetic_revos_info`` fixture.
    """
    return Path(synthetic_revos_info.root_uri)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One intra-op torch thread for the whole suite.

    The tests run tiny, latency-bound models; on the 2-core CI machine extra threads only contend
    with each other and with the Ray workers the tests start, and make timings unstable.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
