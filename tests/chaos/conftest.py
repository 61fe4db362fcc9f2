"""Chaos suite fixtures: prints the figures (inputs tried, faults injected, rows lost...) at the end."""
from __future__ import annotations

import os

import pytest

from tests.chaos.figures import FIGURES


@pytest.fixture(scope="session", autouse=True)
def chaos_figures():
    yield FIGURES
    if FIGURES.counts or FIGURES.notes:
        print("\n" + FIGURES.summary())
        path = os.environ.get("VRSHQ_CHAOS_FIGURES")
        if path:
            with open(path, "w") as handle:
                handle.write(FIGURES.to_json())
