"""Counters the chaos tests fill in; the session fixture in ``conftest.py`` prints them at the end
(and writes ``tests/chaos/figures.json`` when ``VRSHQ_CHAOS_FIGURES`` names a path)."""
from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

__all__ = ["FIGURES", "Figures"]


class Figures:
    """Named counters grouped by section (inputs tried, faults injected, jobs, rows lost...)."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.notes: dict[str, Any] = {}

    def add(self, section: str, name: str, n: float = 1) -> None:
        self.counts[section][name] += n

    def set(self, name: str, value: Any) -> None:
        self.notes[name] = value

    def as_dict(self) -> dict[str, Any]:
        return {"counts": {s: dict(c) for s, c in self.counts.items()}, "notes": dict(self.notes)}

    def summary(self) -> str:
        lines = ["chaos suite figures:"]
        for section, counts in sorted(self.counts.items()):
            total = sum(counts.values())
            lines.append(f"  {section}: {total:g}")
            lines += [f"    {name}: {value:g}" for name, value in sorted(counts.items())]
        lines += [f"  {name}: {value}" for name, value in sorted(self.notes.items())]
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, sort_keys=True)


FIGURES = Figures()
