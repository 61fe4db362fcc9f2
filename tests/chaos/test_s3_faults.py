"""Transient S3 faults at the client level: reads and writes through :class:`FaultyS3Proxy` retry
and succeed byte for byte; a permanent error is a clear exception, never a short or empty result.
(The same proxy sits in front of a whole ``run_inference`` job in ``test_jobs_under_faults.py``.)"""
from __future__ import annotations

import hashlib

import pytest

from tests.chaos.figures import FIGURES
from tests.chaos.s3_proxy import FaultyS3Proxy

#: What a user passes to survive a flaky store: botocore's "standard" retry mode (500/503, throttling
#: and connection errors, exponential backoff) with more attempts than the default 3.
RETRIES = {"config_kwargs": {"retries": {"max_attempts": 8, "mode": "standard"}}}


def _options(endpoint: str) -> dict:
    return {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint}, **RETRIES}


def test_reads_and_writes_retry_through_faults(s3_server):
    import s3fs

    bucket = s3_server.make_bucket().removeprefix("s3://")
    payloads = {f"{bucket}/obj/{i:03d}.bin": hashlib.sha256(str(i).encode()).digest() * (i + 1) for i in range(16)}
    with FaultyS3Proxy(s3_server.endpoint_url, seed=5, fault_rate=0.3, delay_rate=0.1, max_faults=40) as proxy:
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **_options(proxy.endpoint_url))
        for path, data in payloads.items():
            fs.pipe_file(path, data)
        fs.invalidate_cache()
        listed = sorted(fs.ls(f"{bucket}/obj"))
        read = {path: fs.cat_file(path) for path in payloads}
    FIGURES.add("faults", "S3 5xx/dropped connections (client-level test)", proxy.counts["faults"])
    FIGURES.add("faults", "S3 slow responses (client-level test)", proxy.counts["delay"])
    assert proxy.counts["faults"] >= 5, proxy.counts  # the faults really happened
    assert listed == sorted(payloads)
    assert read == payloads
    direct = s3_server.filesystem()
    assert {p: direct.cat_file(p) for p in payloads} == payloads  # what the store holds, not a cached view


def test_permanent_error_is_a_clear_failure(s3_server):
    import s3fs

    bucket = s3_server.make_bucket().removeprefix("s3://")
    s3_server.filesystem().pipe_file(f"{bucket}/lost/frame.jpg", b"x" * 100)
    with FaultyS3Proxy(s3_server.endpoint_url, seed=1, fault_rate=0.0, permanent=("/lost/",)) as proxy:
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **_options(proxy.endpoint_url))
        with pytest.raises(PermissionError):
            fs.cat_file(f"{bucket}/lost/frame.jpg")
    FIGURES.add("faults", "S3 permanent 403", 1)
