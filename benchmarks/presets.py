"""The model preset a benchmark runs for a command-line preset, and the Ray runtime env of its workers.

``vrshq_7b_config()`` builds the LLaMA tokenizer from local files (``tokenizer_path``); without them
the model has no tokenizer and cannot run ``segment_video``. A GPU benchmark host has no LLaMA
files and no network, so ``--preset vrshq-7b`` runs the library's ``vrshq-7b-tinytok`` preset
(``vrshq.builders.vrshq_7b_tinytok_config``: every 7B size, random init, the tiny tokenizer built
in code). The preset is registered in ``vrshq.presets.PRESETS`` by the library itself, so
Ray workers need no registration hook: they only need the repository on their ``PYTHONPATH``.
"""
from __future__ import annotations

import os
from typing import Any

__all__ = ["BENCH_7B_PRESET", "ray_runtime_env", "resolve_preset"]

BENCH_7B_PRESET = "vrshq-7b-tinytok"


def resolve_preset(preset: str) -> str:
    """The preset to run for a command-line preset: ``vrshq-7b`` without tokenizer files -> the tinytok variant.

    Raises:
        ValueError: an unknown preset, or one without a tokenizer that has no tinytok variant.
    """
    from vrshq.presets import PRESETS

    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r} is unknown; known: {sorted(PRESETS)}")
    cfg = PRESETS[preset]()
    if cfg.llm.tokenizer == "llama" and cfg.llm.tokenizer_path is None:
        if preset == "vrshq-7b":
            return BENCH_7B_PRESET
        raise ValueError(f"--preset {preset!r} has no tokenizer (LlmConfig.tokenizer_path is None); it cannot segment")
    return preset


def ray_runtime_env(repo_root: str) -> dict[str, Any]:
    """Runtime env for ``ray.init``: the repository importable in every worker."""
    path = os.pathsep.join(p for p in (repo_root, os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path}}
