"""Fixtures of the pipeline tests: the session's real local Ray head (``ray_head``) and this process as
a driver connected to it (``ray_on_head``); both live in tests/ray_cluster.py."""
from __future__ import annotations

from tests.ray_cluster import ray_head, ray_on_head  # noqa: F401 - pytest fixtures

__all__ = ["ray_head", "ray_on_head"]
