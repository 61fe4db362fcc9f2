"""The layering rules of docs/development.md: vrshq imports no Ray, schemas imports only pyarrow.

Checked on the source (the import statements), so a violation fails even if it sits in a
function body that no other test reaches.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _imported_roots(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("vrshq", {"ray", "pipelines", "jobs"}),
        ("schemas", {"ray", "torch", "vrshq", "pipelines", "jobs", "numpy", "pandas"}),
        ("pipelines", {"jobs"}),
    ],
)
def test_layering(package, forbidden):
    roots = _imported_roots(package)
    bad = {name: sorted(files) for name, files in roots.items() if name in forbidden}
    assert not bad, f"{package}/ must not import {sorted(bad)}: {bad}"


def test_the_checker_sees_imports():
    # Guard against a checker that finds nothing: schemas/ does import pyarrow.
    assert "pyarrow" in _imported_roots("schemas")
