"""Run a YAML recipe of ``research.learnability`` runs, in order: how a committed checkpoint is rebuilt.

A recipe lists named runs, each with its settings (the fields of ``LearnabilityConfig``, nested as in a
``--config`` file). Run ``name`` writes to ``<out>/<name>``; ``{out}`` in a setting is the recipe's ``--out``, so
a later run can start from an earlier one's model. More ``research.learnability`` flags after the recipe's own go
to every run and win over the recipe (e.g. ``--max-minutes 30``). A run that stops early (exit status 75, saved)
ends the recipe with that status: the same command again continues it, and a complete run is loaded, not
retrained::

    python -m research.recipe research/recipes/tiny_synthetic.yaml --out out/learn --device cuda
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["RecipeRun", "main", "read_recipe", "run_arguments"]


@dataclass(frozen=True)
class RecipeRun:
    """One run of a recipe: its name (its folder under ``--out``) and its settings."""

    name: str
    settings: Mapping[str, Any]


def read_recipe(path: str) -> list[RecipeRun]:
    """The runs of the recipe file ``path``.

    Raises:
        SystemExit: the file is unreadable or not a list of runs with a name and a settings mapping.
    """
    import yaml

    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"research.recipe: {path} is unreadable ({type(exc).__name__}: {exc})") from exc
    runs = doc.get("runs") if isinstance(doc, dict) else None
    problems = [] if isinstance(runs, list) and runs else [f"{path}: needs 'runs:', a non-empty list"]
    names: set[str] = set()
    for i, run in enumerate(runs or []):
        if not isinstance(run, dict) or not isinstance(run.get("name"), str) or not run["name"] \
                or "/" in run["name"] or not isinstance(run.get("settings"), dict):
            problems.append(f"{path}: runs[{i}] needs a name (no '/') and a settings mapping")
        elif run["name"] in names:
            problems.append(f"{path}: runs[{i}] repeats the name {run['name']!r}")
        else:
            names.add(run["name"])
    if problems:
        raise SystemExit("research.recipe: " + "; ".join(problems))
    return [RecipeRun(run["name"], run["settings"]) for run in runs]


def _dotted(settings: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in settings.items():
        if isinstance(value, dict):
            yield from _dotted(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def run_arguments(run: RecipeRun, *, out: str, extra: Sequence[str] = ()) -> list[str]:
    """The ``research.learnability`` command line of ``run``: its settings as ``key=value`` overrides (flags in
    ``extra`` win over them), ``{out}`` replaced by ``out``."""
    import yaml

    args = []
    for key, value in _dotted(run.settings):
        if isinstance(value, str):
            value = value.replace("{out}", out)
        text = yaml.safe_dump(value, default_flow_style=True).strip()
        args.append(f"{key}={text.removesuffix('...').strip()}")
    return [*args, "--out", f"{out.rstrip('/')}/{run.name}", *extra]


def main(argv: Sequence[str] | None = None) -> int:
    """Run every run of the recipe in order; the first status other than 0 ends it and is returned."""
    parser = argparse.ArgumentParser(prog="python -m research.recipe", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="the recipe YAML (e.g. research/recipes/tiny_synthetic.yaml)")
    parser.add_argument("--out", required=True, help="folder of the runs (run NAME writes to OUT/NAME)")
    args, extra = parser.parse_known_args(argv)
    from research import learnability

    for run in read_recipe(args.recipe):
        status = learnability.main(run_arguments(run, out=args.out, extra=extra))
        if status != 0:
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
