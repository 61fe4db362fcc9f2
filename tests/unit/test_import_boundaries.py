"""The layering rules of docs/development.md: vrshq imports no Ray, schemas imports only pyarrow, and the product
(vrshq, pipelines, jobs, schemas) never imports the research wing, the benchmarks or the scripts.

Checked on the source (the import statements), so a violation fails even if it sits in a
function body that no other test reaches.
"""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
_NOT_PRODUCT = {"research", "benchmarks", "scripts"}
"""Top-level folders that the product packages must never import."""


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
        ("vrshq", {"ray", "pipelines", "jobs", *_NOT_PRODUCT}),
        ("schemas", {"ray", "torch", "vrshq", "pipelines", "jobs", "numpy", "pandas", *_NOT_PRODUCT}),
        ("pipelines", {"jobs", *_NOT_PRODUCT}),
        ("jobs", _NOT_PRODUCT),
    ],
)
def test_layering(package, forbidden):
    roots = _imported_roots(package)
    bad = {name: sorted(files) for name, files in roots.items() if name in forbidden}
    assert not bad, f"{package}/ must not import {sorted(bad)}: {bad}"


def _imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("name", ["config.py", "vision_config.py", "sam2_config.py"])
def test_the_configs_import_no_model_module(name):
    """The model imports its configs, never the other way round: no import cycle through ``vrshq.model``."""
    modules = _imported_modules(ROOT / "vrshq" / name)
    assert "vrshq.sam2_config" in _imported_modules(ROOT / "vrshq" / "config.py")  # the checker sees vrshq imports
    bad = sorted(m for m in modules if m == "vrshq.model" or m.startswith(("vrshq.model.", "vrshq.builders")))
    assert not bad, f"vrshq/{name} imports {bad}"


def test_the_checker_sees_imports():
    # Guard against a checker that finds nothing: schemas/ does import pyarrow.
    assert "pyarrow" in _imported_roots("schemas")


def test_the_checker_sees_research_imports():
    # The research wing imports the product; the checker must see that too.
    assert {"pipelines", "jobs"} <= set(_imported_roots("research"))


def test_product_presets_name_product_builders_only():
    from vrshq.presets import PRESETS

    assert all(builder.__module__.split(".")[0] == "vrshq" for builder in PRESETS.values()), dict(PRESETS)
    assert not any(name.startswith("learn") for name in PRESETS)


def test_one_preset_registry_serves_inference_training_and_benchmarks():
    """Every product preset name works in inference and training, which read the one registry."""
    from benchmarks.presets import resolve_preset
    from pipelines.inference.config import InferenceConfig
    from pipelines.training.train_config import ModelSpec
    from vrshq.presets import PRESETS

    assert set(PRESETS) == {"tiny", "vrshq-7b", "vrshq-7b-tinytok"}
    for name in PRESETS:
        assert InferenceConfig(out="o", manifest="m", preset=name).preset == name
        assert ModelSpec(preset=name).preset == name
        assert resolve_preset(name) in PRESETS
    with pytest.raises(ValueError, match="learn"):
        InferenceConfig(out="o", manifest="m", preset="learn")


def test_jobs_and_the_committed_checkpoint_load_without_the_research_wing():
    """Importing every job and reading the committed checkpoint's config (the demo's model) loads no research
    module: the checkpoint names no research field or preset."""
    code = (
        "import sys\n"
        "import jobs.demo, jobs.evaluate, jobs.export, jobs.infer, jobs.report, jobs.train\n"
        "import pipelines.inference.run, pipelines.training.run, pipelines.training.train_loop\n"
        "from vrshq.checkpoint.load import load_vrshq_config\n"
        f"load_vrshq_config({str(ROOT / 'checkpoints' / 'tiny-synthetic')!r})\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'research', 'benchmarks', 'scripts'})\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
