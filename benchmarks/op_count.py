"""Operators a callable dispatches (torch profiler): on a GPU each is a kernel launch, the cost that bounds small
models there, so the step benchmarks report it beside wall time."""
from __future__ import annotations

from collections.abc import Callable


def count_aten_ops(fn: Callable[[], object]) -> int:
    """``aten::`` operators dispatched by one call of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
