"""Build the model an inference actor runs: a preset with random init, or a preset plus a checkpoint.

The same function runs in every model actor and in tests that compare the pipeline's masks with an
in-process model, so "the same config gives the same weights" holds by construction: random init
is seeded with ``cfg.seed`` right before the build, and a checkpoint overwrites every weight
(strict loading, ``vrshq.model.checkpoint``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipelines.config import MODEL_PRESETS, InferenceConfig

if TYPE_CHECKING:
    import torch

    from vrshq.config import VrshqConfig

__all__ = ["ModelLoadError", "build_model", "check_model_source", "model_config", "resolve_device", "resolve_dtype"]


class ModelLoadError(RuntimeError):
    """The model of an inference config cannot be built (bad preset, checkpoint or device)."""


def resolve_device(name: str) -> "torch.device":
    """``auto`` -> ``cuda`` when a GPU is visible to this process, else ``cpu``."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device={name!r} but this process sees no CUDA device (set device=auto or cpu)")
    return device


def resolve_dtype(name: "str | torch.dtype", device: "torch.device") -> "torch.dtype":
    """The parameter dtype of an inference model: ``auto`` -> bfloat16 on CUDA, float32 elsewhere.

    On CUDA the model runs under bf16 autocast anyway; float32 weights there would take twice the
    memory (31 GB for the 7B preset) and be cast to bf16 again by every op.

    Raises:
        ModelLoadError: an unknown dtype name.
    """
    import torch

    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ModelLoadError(f"dtype={name!r} is unknown; use auto, {', '.join(dtypes)}")
    return dtypes[name]


def model_config(cfg: InferenceConfig) -> "VrshqConfig":
    """The model's ``VrshqConfig``: the checkpoint's ``config.json`` if it has one, else the preset's."""
    if cfg.checkpoint is not None:
        from vrshq.model.checkpoint import CheckpointNotFoundError, load_vrshq_config

        try:
            return load_vrshq_config(cfg.checkpoint, storage_options=cfg.storage_options)
        except CheckpointNotFoundError:
            pass  # a bare weights file: the preset gives the architecture
    import vrshq.builders as builders

    return getattr(builders, MODEL_PRESETS[cfg.preset])()


def check_model_source(cfg: InferenceConfig) -> "VrshqConfig":
    """Fail fast (on the driver, before any Ray work) when the preset or checkpoint is unusable.

    Reads only small files: the checkpoint's ``config.json`` and the existence of its weights.
    The strict key/shape check happens when each actor loads the weights, before its first video.

    Raises:
        ModelLoadError: naming the checkpoint URI and the problem.
    """
    try:
        config = model_config(cfg)
    except Exception as exc:  # noqa: BLE001 - any failure here is a config problem to report
        raise ModelLoadError(f"cannot get the model config (preset={cfg.preset!r}, checkpoint={cfg.checkpoint!r}): {exc}") from exc
    if cfg.checkpoint is not None:
        import fsspec

        try:
            fs, path = fsspec.core.url_to_fs(cfg.checkpoint, **dict(cfg.storage_options))
            exists = fs.exists(path)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"checkpoint {cfg.checkpoint!r} is not readable: {exc}") from exc
        if not exists:
            raise ModelLoadError(
                f"checkpoint {cfg.checkpoint!r} does not exist; give a folder written by "
                "vrshq.model.checkpoint.save_vrshq_checkpoint, or preset=<name> seed=<n> for a random init"
            )
        from vrshq.model.checkpoint import CheckpointError

        try:
            from vrshq.model import checkpoint as ckpt

            # Headers only for safetensors (a public check would be nicer: asked of the checkpoint owner).
            ckpt._open_weight_files(cfg.checkpoint, cfg.storage_options)
        except CheckpointError as exc:
            raise ModelLoadError(f"checkpoint {cfg.checkpoint!r} is unusable: {exc.reason}") from exc
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"checkpoint {cfg.checkpoint!r} is unusable: {exc}") from exc
    return config


def build_model(
    cfg: InferenceConfig,
    *,
    device: "torch.device | str | None" = None,
    dtype: "torch.dtype | str | None" = None,
) -> Any:
    """Build (and load) the ``VrshqModel`` of ``cfg`` in eval mode on ``device`` with ``dtype`` parameters.

    The weights are initialised (and loaded) in float32 and then cast, so a bf16 model holds exactly
    the bf16 rounding of the float32 model of the same config, whatever the dtype.

    Args:
        cfg: the inference config (preset or checkpoint, seed, device, dtype).
        device: overrides ``cfg.device``.
        dtype: overrides ``cfg.dtype`` (``auto``: bfloat16 on CUDA, float32 on CPU; see :func:`resolve_dtype`).

    Raises:
        ModelLoadError: wrapping any checkpoint problem (missing, unsafe, mismatched keys) or a bad dtype.
    """
    import torch

    from vrshq.builders import build_vrshq

    device = resolve_device(cfg.device) if device is None else torch.device(device)
    dtype = resolve_dtype(cfg.dtype if dtype is None else dtype, device)
    try:
        config = model_config(cfg)
    except Exception as exc:  # noqa: BLE001 - unreadable config.json etc.: one error type for callers
        raise ModelLoadError(f"cannot get the model config (preset={cfg.preset!r}, checkpoint={cfg.checkpoint!r}): {exc}") from exc
    torch.manual_seed(cfg.seed)
    model = build_vrshq(config, device=device)
    if cfg.checkpoint is not None:
        from vrshq.model.checkpoint import CheckpointError, load_vrshq_checkpoint

        try:
            load_vrshq_checkpoint(model, cfg.checkpoint, storage_options=cfg.storage_options)
        except CheckpointError as exc:
            raise ModelLoadError(f"cannot load checkpoint {cfg.checkpoint!r}: {exc}") from exc
    if dtype != torch.float32:
        model.to(dtype=dtype)
    return model.eval()
