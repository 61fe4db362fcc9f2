"""Stage folders continue only under the settings they were written with (research.stage_files)."""
from __future__ import annotations

import dataclasses
import json

from research.config import GroundingPretrainConfig
from research.stage_files import same_settings


def _written(cfg) -> dict:
    return json.loads(json.dumps({"config": dataclasses.asdict(cfg)}))  # as a summary file holds it


def test_same_settings_compares_as_json_and_reads_missing_settings_as_defaults():
    cfg = GroundingPretrainConfig(steps=10, focus_kinds=("static", "fastest"), focus_share=0.5)
    assert same_settings(_written(cfg), cfg)  # the tuple came back as a list
    older = _written(GroundingPretrainConfig(steps=10))
    del older["config"]["focus_kinds"], older["config"]["focus_share"]  # written before these settings existed
    assert same_settings(older, GroundingPretrainConfig(steps=10))
    assert not same_settings(older, cfg)
    assert not same_settings(_written(cfg), dataclasses.replace(cfg, lr=5e-4))
    assert not same_settings(None, cfg)
