"""VRS-HQ model parts. Public names are imported lazily so that importing one part (e.g. the
letterbox) does not build or import the others (transformers, sam2)."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "SegmentationResult",
    "SegHead",
    "TrainBatch",
    "TrainVideo",
    "VrshqMLLM",
    "VrshqModel",
    "VrshqOutput",
    "VrshqTokenIds",
    "add_vrshq_tokens",
    "make_train_batch",
]

_LOCATIONS = {
    "SegmentationResult": "vrshq.model.outputs",
    "TrainBatch": "vrshq.model.outputs",
    "TrainVideo": "vrshq.model.outputs",
    "VrshqOutput": "vrshq.model.outputs",
    "make_train_batch": "vrshq.model.outputs",
    "SegHead": "vrshq.model.seg_head",
    "VrshqMLLM": "vrshq.model.mllm",
    "VrshqModel": "vrshq.model.vrshq_model",
    "VrshqTokenIds": "vrshq.model.tokens",
    "add_vrshq_tokens": "vrshq.model.tokens",
}


def __getattr__(name: str) -> Any:
    module = _LOCATIONS.get(name)
    if module is None:
        raise AttributeError(f"module 'vrshq.model' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
