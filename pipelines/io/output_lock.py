"""One writer per output prefix: a lock file with a heartbeat.

Two ``infer`` runs writing the same output would race on resume (each would see the other's
pairs as pending, and orphan cleanup could delete the other's uncommitted files). The first run
creates ``<output>/_lock.json`` with an exclusive create (``O_EXCL`` on local disk,
``If-None-Match: *`` on S3); a second run is refused with a message that names the holder.

A run killed with ``SIGKILL`` cannot remove its lock, so the lock carries a heartbeat that a
background thread refreshes. A lock is stale, and is taken over, when its heartbeat is older than
``stale_after_s`` or when it was written on this host by a process that no longer exists.
``break_lock=True`` takes over any lock (the operator says the holder is dead). The lock records of
the runs taken over are kept in :attr:`OutputLock.taken_over`, so the new run can mark their run
records ``interrupted`` (:func:`pipelines.io.run_records.mark_interrupted`).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

from pipelines.io.storage import filesystem_for
from vrshq.data.paths import contained_uri

__all__ = ["LOCK_NAME", "OutputLock", "OutputLockedError"]

LOCK_NAME = "_lock.json"
_LOG = logging.getLogger(__name__)


class OutputLockedError(RuntimeError):
    """Another live run holds the output lock; the message names it and how to proceed."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """Exclusive lock on an output prefix, held for the duration of a ``with`` block.

    Args:
        output: output URI whose ``_lock.json`` is the lock.
        run_id: written into the lock so a refusal names the holder.
        storage_options: fsspec options of ``output``.
        stale_after_s: a heartbeat older than this makes the lock stale.
        heartbeat_s: how often the holder refreshes the heartbeat (default ``stale_after_s / 5``).
        break_lock: take over a live-looking lock too.

    Raises:
        OutputLockedError: from ``__enter__`` when a live run holds the lock.
    """

    def __init__(
        self,
        output: str,
        *,
        run_id: str,
        storage_options: Mapping[str, Any] | None = None,
        stale_after_s: float = 300.0,
        heartbeat_s: float | None = None,
        break_lock: bool = False,
    ):
        if stale_after_s <= 0:
            raise ValueError(f"stale_after_s must be > 0, got {stale_after_s}")
        self.uri = contained_uri(output, LOCK_NAME)
        self._fs, self._path = filesystem_for(self.uri, storage_options)
        self._run_id = run_id
        self._stale_after_s = float(stale_after_s)
        self._heartbeat_s = float(heartbeat_s) if heartbeat_s is not None else self._stale_after_s / 5
        self._break_lock = break_lock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._created_at = 0.0
        #: Lock records (run_id, host, pid, heartbeat) of the dead runs this lock was taken over from.
        self.taken_over: list[dict[str, Any]] = []

    def _record(self) -> bytes:
        return json.dumps(
            {
                "run_id": self._run_id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "created_at": self._created_at,
                "heartbeat_at": time.time(),
            }
        ).encode()

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self._fs.cat_file(self._path))
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            return {}  # unreadable or half-written: judged by its age below

    def _why_stale(self, holder: dict[str, Any]) -> str | None:
        heartbeat = holder.get("heartbeat_at")
        if not isinstance(heartbeat, (int, float)):
            return "it is unreadable"
        age = time.time() - heartbeat
        if age > self._stale_after_s:
            return f"its heartbeat is {age:.0f} s old (> {self._stale_after_s:.0f} s)"
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            if not _pid_alive(holder["pid"]):
                return f"its process {holder['pid']} on this host is gone"
        return None

    def acquire(self) -> None:
        """Take the lock or raise :class:`OutputLockedError`; starts the heartbeat thread."""
        self._created_at = time.time()
        folder = self._path.rsplit("/", 1)[0]
        self._fs.makedirs(folder, exist_ok=True)
        for _ in range(3):
            try:
                self._fs.pipe_file(self._path, self._record(), mode="create")
                break
            except FileExistsError:
                holder = self._read()
                if holder is None:
                    continue  # released meanwhile: try again
                reason = "break_lock=true" if self._break_lock else self._why_stale(holder)
                if reason is None:
                    raise OutputLockedError(
                        f"output {self.uri.rsplit('/', 1)[0]} is locked by run {holder.get('run_id')!r} "
                        f"(host {holder.get('host')}, pid {holder.get('pid')}, heartbeat "
                        f"{time.time() - holder.get('heartbeat_at', 0):.0f} s ago). Wait for it to finish, "
                        f"use another output URI, or pass break_lock=true if that run is dead "
                        f"(the lock becomes stale by itself after {self._stale_after_s:.0f} s)."
                    ) from None
                _LOG.warning("taking over the lock %s of run %r: %s", self.uri, holder.get("run_id"), reason)
                if self._read() == holder:  # unchanged since judged: nobody else took it over meanwhile
                    self._fs.rm_file(self._path)
                    self.taken_over.append(holder)
        else:
            raise OutputLockedError(f"could not create the lock {self.uri} after 3 attempts (lock contention)")
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="vrshq-output-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            try:
                holder = self._read()
                if holder and holder.get("run_id") != self._run_id:
                    _LOG.error("lock %s was taken over by run %r", self.uri, holder.get("run_id"))
                    return
                self._fs.pipe_file(self._path, self._record())
            except OSError as exc:  # transient storage error: the next beat retries
                _LOG.warning("lock heartbeat failed: %s", exc)

    def release(self) -> None:
        """Stop the heartbeat and delete the lock if this run still holds it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        holder = self._read()
        if holder and holder.get("run_id") == self._run_id:
            self._fs.rm_file(self._path)

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
