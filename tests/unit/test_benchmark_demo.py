"""benchmarks.demo_speed reads the demo's table and phase times from what the demo prints."""
from __future__ import annotations

import datetime as dt

import pytest

from benchmarks import demo_speed

PRINTED = """report for revos/valid written to /tmp/x/report (111 expressions, 0 errors)
                J      F    J&F      n
referring    89.3   90.7   90.0     62
reasoning    67.7   71.4   69.6     49
overall      78.5   81.0   79.8    111
A (accuracy) 97.7   R (robustness) 93.0

model: checkpoint checkpoints/tiny-synthetic
"""

LOG = """2026-12-05 16:45:20,207 INFO jobs.demo: wrote 16 synthetic videos to /tmp/x/data
2026-12-05 16:45:32,168 INFO jobs.infer: run 20261205T164532Z-584ea7: 16 video(s) / 111 expression(s) to do, 0 already done
2026-12-05 16:46:37,007\tINFO streaming_executor.py:371 -- Dataset execution finished in 63.93 seconds
2026-12-05 16:46:37,019 INFO jobs.infer: run 20261205T164532Z-584ea7 completed in 64.9 s: 16 video(s)
"""


def test_table_rows_are_the_score_rows():
    assert demo_speed.table_rows(PRINTED) == [
        "referring    89.3   90.7   90.0     62", "reasoning    67.7   71.4   69.6     49",
        "overall      78.5   81.0   79.8    111", "A (accuracy) 97.7   R (robustness) 93.0"]


def test_phases_split_the_run_at_the_inference_run_lines():
    started = dt.datetime(2026, 12, 5, 16, 45, 19, 500000)
    got = demo_speed.phases(LOG, started, dt.datetime(2026, 12, 5, 16, 46, 45, 19000))
    assert got == pytest.approx({"start-up": 12.668, "segmentation": 64.851, "report+exit": 8.0})
    assert demo_speed.phases("no run lines", started, started) == {}


def test_the_reference_command_is_python():
    compile(demo_speed.REFERENCE, "<reference>", "exec")
