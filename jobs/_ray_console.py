"""What a job's console shows of Ray: the lines a user can act on, not Ray's notes about itself.

Two kinds of lines reach every run's console today and help no user:

* Ray's warning that token authentication was turned on (or is off) for a local cluster that the job
  starts itself. Ray turns token authentication on for such a cluster unless ``RAY_AUTH_MODE`` says
  otherwise, and warns because the mode was not chosen. :func:`choose_local_auth_mode` chooses what Ray
  would choose, explicitly, so Ray has nothing to warn about; a mode the user set is kept.
* Ray Data's actor pools hand their actors' constructor arguments (the data context and the map
  function) as object references, with actor restarts on; Ray's core worker then logs, at error level
  and once per driver, that an actor "has constructor arguments in the object store and max_restarts
  > 0" (https://github.com/ray-project/ray/issues/57733). It comes from Ray Data's own call, whatever
  the job passes, and the restarts are what recovers a lost model actor (off, one lost actor fails
  the whole dataset), so no setting of ours removes it. :func:`drop_unactionable_ray_errors` drops
  exactly that line from the driver's standard error.
"""
from __future__ import annotations

import atexit
import os
import sys
import threading

__all__ = ["UNACTIONABLE_RAY_ERRORS", "choose_local_auth_mode", "drop_unactionable_ray_errors"]

UNACTIONABLE_RAY_ERRORS: tuple[bytes, ...] = (
    b"has constructor arguments in the object store and max_restarts > 0",
)
"""Fragments of the error-level lines of Ray's core worker that :func:`drop_unactionable_ray_errors` drops."""

_AUTH_MODE = "RAY_AUTH_MODE"
_installed = threading.Lock()
_state: dict[str, object] = {}


def choose_local_auth_mode(address: str | None) -> None:
    """Before ``ray.init(address)``: set ``RAY_AUTH_MODE`` to what Ray would pick for a local cluster.

    Only where Ray would pick one itself and warn: ``address`` and ``RAY_ADDRESS`` unset (or "auto") and
    ``RAY_AUTH_MODE`` unset. A new local cluster gets token authentication (Ray's default; it creates
    ``~/.ray/auth_token`` if missing); joining a local cluster found on this machine uses a token when one
    exists, as Ray does. Any failure to tell leaves the choice to Ray.
    """
    if os.environ.get(_AUTH_MODE) is not None or address not in (None, "auto") or os.environ.get("RAY_ADDRESS"):
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            AuthenticationTokenLoader,
            _enable_token_auth,
        )
        from ray._private.services import canonicalize_bootstrap_address

        new_cluster = canonicalize_bootstrap_address(address) is None
        has_token = AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True)
    except Exception:  # noqa: BLE001 - a private Ray helper moved: Ray chooses (and warns) as before
        return
    if new_cluster or has_token:
        # Ray's own switch: sets RAY_AUTH_MODE=token and reloads the mode this process read at `import ray`
        # (without the reload no token would be created for a new cluster, and its GCS would not start).
        _enable_token_auth()


def drop_unactionable_ray_errors() -> None:
    """From now on, drop the lines of :data:`UNACTIONABLE_RAY_ERRORS` from this process's standard error.

    Call it after ``ray.init``: the processes of a local cluster are started by then and keep the real
    standard error; only this driver's writes (Python's and its core worker's, which write to file
    descriptor 2 directly) pass through a pipe whose reader forwards every other line at once. At exit
    the descriptor is restored and the reader drains the pipe. Idempotent.
    """
    with _installed:
        if _state:
            return
        sys.stderr.flush()
        read_end, write_end = os.pipe()
        original = os.dup(2)
        os.dup2(write_end, 2)
        os.close(write_end)
        reader = threading.Thread(target=_forward, args=(read_end, original), name="ray-stderr-filter", daemon=True)
        reader.start()
        _state.update(original=original, reader=reader)
        atexit.register(_restore)


def _forward(read_end: int, original: int) -> None:
    pending = b""
    while chunk := os.read(read_end, 1 << 16):
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        kept = b"".join(line + b"\n" for line in lines if not any(f in line for f in UNACTIONABLE_RAY_ERRORS))
        if kept:
            os.write(original, kept)
    if pending:
        os.write(original, pending)
    os.close(read_end)


def _restore() -> None:
    """Put the original standard error back; the reader ends when the pipe has no writer left."""
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os.dup2(int(_state["original"]), 2)  # closes the pipe's write end held as descriptor 2
    reader = _state["reader"]
    assert isinstance(reader, threading.Thread)
    reader.join(timeout=2)
