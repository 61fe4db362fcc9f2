"""Model presets the benchmark needs that the library does not ship: the 7B sizes with a built-in tokenizer.

``vrshq_7b_config()`` builds the LLaMA tokenizer from local files (``tokenizer_path``); without them
the model has no tokenizer and cannot run ``segment_video``. A GPU benchmark host has no LLaMA
files and no network, and a random-init model does not care which tokenizer it reads, so the
preset ``vrshq-7b-tinytok`` keeps every 7B size (CLIP-L/14 tower, LLaMA-7B, Hiera-L, CLIP-336
anchor) and swaps in the tiny word-level tokenizer built in code. Prompt lengths are dominated by
the 112 visual tokens per frame (>= 1,100 of ~1,200 tokens), so the timing is representative.

The preset is registered in ``pipelines.config.MODEL_PRESETS`` (and as a function of
``vrshq.builders``, where :func:`pipelines.model_loader.model_config` looks presets up) in this
process by :func:`register_benchmark_presets`, and in every Ray worker through the runtime
environment's ``worker_process_setup_hook`` (see :func:`ray_runtime_env`), so the pipeline's model
actors build exactly the model the in-process measurements use.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

__all__ = ["BENCH_7B_PRESET", "ray_runtime_env", "register_benchmark_presets", "resolve_preset", "vrshq_7b_tinytok_config"]

BENCH_7B_PRESET = "vrshq-7b-tinytok"
_FUNCTION = "vrshq_7b_tinytok_config"


def vrshq_7b_tinytok_config() -> Any:
    """``vrshq_7b_config()`` (random init) with the tiny tokenizer built in code instead of LLaMA files."""
    from vrshq.builders import vrshq_7b_config

    cfg = vrshq_7b_config()
    return dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, tokenizer="tiny", tokenizer_path=None),
                               name=BENCH_7B_PRESET)


def register_benchmark_presets() -> None:
    """Make ``preset=vrshq-7b-tinytok`` known to ``pipelines.config`` and ``pipelines.model_loader`` (idempotent)."""
    import pipelines.config as pipeline_config
    import vrshq.builders as builders

    if not hasattr(builders, _FUNCTION):
        setattr(builders, _FUNCTION, vrshq_7b_tinytok_config)
    pipeline_config.MODEL_PRESETS.setdefault(BENCH_7B_PRESET, _FUNCTION)


def resolve_preset(preset: str) -> str:
    """The preset to run for a command-line preset: ``vrshq-7b`` without tokenizer files -> the tinytok variant.

    Raises:
        ValueError: an unknown preset.
    """
    import pipelines.config as pipeline_config
    import vrshq.builders as builders

    register_benchmark_presets()
    if preset not in pipeline_config.MODEL_PRESETS:
        raise ValueError(f"--preset {preset!r} is unknown; known: {sorted(pipeline_config.MODEL_PRESETS)}")
    cfg = getattr(builders, pipeline_config.MODEL_PRESETS[preset])()
    if cfg.llm.tokenizer == "llama" and cfg.llm.tokenizer_path is None:
        if preset == "vrshq-7b":
            return BENCH_7B_PRESET
        raise ValueError(f"--preset {preset!r} has no tokenizer (LlmConfig.tokenizer_path is None); it cannot segment")
    return preset


def ray_runtime_env(repo_root: str) -> dict[str, Any]:
    """Runtime env for ``ray.init``: the repo importable in workers and the presets registered there."""
    path = os.pathsep.join(p for p in (repo_root, os.environ.get("PYTHONPATH", "")) if p)
    return {
        "env_vars": {"PYTHONPATH": path},
        "worker_process_setup_hook": f"{__name__}.register_benchmark_presets",
    }
