"""The committed checkpoint's recipe (research/recipes/tiny_synthetic.yaml) gives exactly the settings of the two
runs that built it, as their command lines stated them, and extra flags reach every run."""
from __future__ import annotations

import pathlib

import pytest

from jobs._cli import parse_config
from research.config import LearnabilityConfig
from research.recipe import read_recipe, run_arguments

ROOT = pathlib.Path(__file__).resolve().parents[2]
RECIPE = ROOT / "research" / "recipes" / "tiny_synthetic.yaml"

# The two command lines of checkpoints/tiny-synthetic, flag for flag.
BASE = ("--preset learn-256-pos --track.attribute-weight 1 --track.steps 3200 --grounding.steps 1500 --steps 1200 "
        "--seed 0 --expression-word-weight 1 --ema-decay 0.999 --data-workers 3 --threads 4 --heldout-videos 32 "
        "--eval-every 500 --out OUT/base")
FINAL = ("--preset learn-256-pos-p4 --sam2-init OUT/base/model --vision.steps 600 --grounding.steps 3600 "
         "--grounding.lr-schedule constant --grounding.videos-per-step 256 --grounding.focus-kinds static "
         "--grounding.focus-kinds fastest --grounding.focus-kinds moving --grounding.focus-share 1 "
         "--grounding.focus-steps 1642 --grounding.focus-share-after 0.5 --grounding.eval-every 200 "
         "--grounding.heldout-videos 384 --grounding.target-loss bce --steps 1200 --seed 0 --expression-word-weight 1 "
         "--ema-decay 0.999 --data-workers 12 --threads 4 --heldout-videos 32 --eval-every 600 --out OUT/final")


def _parse(argv: list[str]) -> LearnabilityConfig:
    return parse_config(LearnabilityConfig, argv, prog="t", description="t")


def test_the_recipe_gives_the_settings_of_the_commands_that_built_the_checkpoint():
    runs = read_recipe(str(RECIPE))
    assert [run.name for run in runs] == ["base", "final"]
    for run, command in zip(runs, (BASE, FINAL)):
        from_recipe = _parse(run_arguments(run, out="OUT", extra=["--device", "cuda"]))
        assert from_recipe == _parse([*command.split(), "--device", "cuda"])


def test_flags_after_the_recipe_win_and_a_bad_recipe_names_its_problem(tmp_path):
    base = read_recipe(str(RECIPE))[0]
    cfg = _parse(run_arguments(base, out="o", extra=["--steps", "2", "--track.steps", "3"]))
    assert (cfg.steps, cfg.track.steps, cfg.track.attribute_weight, cfg.out) == (2, 3, 1.0, "o/base")
    bad = tmp_path / "bad.yaml"
    bad.write_text("runs:\n  - name: a\n    settings: {}\n  - name: a\n    settings: {}\n  - settings: {}\n")
    with pytest.raises(SystemExit, match="repeats the name 'a'.*runs\\[2\\] needs a name"):
        read_recipe(str(bad))
