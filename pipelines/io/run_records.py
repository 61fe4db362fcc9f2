"""The ``runs/<run_id>.json`` records of an output: one per run, with its status and counts.

A run writes its record when it starts (``running``) and when it ends (``completed`` or
``failed``). A run killed without cleanup (SIGKILL, a lost node) cannot write its end; the run
that takes over its output lock marks the record ``interrupted`` (:func:`mark_interrupted`), so
``runs/`` never claims that a dead run is still going.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Mapping
from typing import Any

from pipelines.io.storage import filesystem_for, join_uri, write_json
from vrshq.data.paths import PathEscapeError, contained_uri

__all__ = ["RUNS_FOLDER", "mark_interrupted", "run_record_uri"]

RUNS_FOLDER = "runs"
_LOG = logging.getLogger(__name__)


def run_record_uri(output: str, run_id: str) -> str:
    """``<output>/runs/<run_id>.json``; the run id is data and is checked to stay under ``runs/``."""
    return contained_uri(join_uri(output, RUNS_FOLDER), f"{run_id}.json", what="run id")


def mark_interrupted(output: str, holder: Mapping[str, Any], *, by: str,
                     storage_options: Mapping[str, Any] | None = None) -> bool:
    """Mark the run record of a dead lock holder ``interrupted``; True when a record was changed.

    Only a record that still says ``running`` is changed (a run that ended wrote its own status).
    Never raises: a missing or unreadable record is logged and left alone.
    """
    run_id = holder.get("run_id")
    if not isinstance(run_id, str) or not run_id:
        return False
    try:
        fs, path = filesystem_for(run_record_uri(output, run_id), storage_options)
        record = json.loads(fs.cat_file(path))
        if not isinstance(record, dict) or record.get("status") != "running":
            return False
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        record.update(status="interrupted", finished_at=record.get("finished_at") or None,
                      interrupted_at=now, interrupted_by=by,
                      last_heartbeat_at=holder.get("heartbeat_at"))
        write_json(run_record_uri(output, run_id), record, storage_options)
    except (FileNotFoundError, PathEscapeError):
        return False
    except Exception:  # noqa: BLE001 - bookkeeping must not stop the new run
        _LOG.exception("could not mark run %r interrupted", run_id)
        return False
    _LOG.warning("run %r stopped without finishing (its lock was stale): its record now says 'interrupted'", run_id)
    return True
