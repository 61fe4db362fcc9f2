"""Build the model an inference actor runs: a preset with random init, or a preset plus a checkpoint.

The same function runs in every model actor and in tests that compare the pipeline's masks with an
in-process model, so "the same config gives the same weights" holds by construction: random init
is seeded with ``cfg.seed`` right before the build, and a checkpoint overwrites every weight
(strict loading, ``vrshq.checkpoint``).

Two kinds of checkpoint load: a vrshq checkpoint (its ``config.json`` holds the model config), and
the released VRS-HQ folder as published (``vrshq.checkpoint.release``). For the release, the preset gives
the architecture, the release's ``config.json`` the LLM sizes, its slow-tokenizer files the tokenizer;
the CLIP-336 anchor comes from ``cfg.anchor`` (a folder, or ``random`` on request) and SAM2 from the
release or ``cfg.sam2``. The model is built on empty weights and filled shard by shard on its device
(``vrshq.checkpoint.official_names.load_official_checkpoint``), so a 7B load does not hold the weights twice.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipelines.inference.config import InferenceConfig
from vrshq.presets import PRESETS

if TYPE_CHECKING:
    import torch

    from vrshq.config import VrshqConfig

__all__ = [
    "ModelLoadError",
    "build_model",
    "build_release_model",
    "check_model_source",
    "model_config",
    "resolve_device",
    "resolve_dtype",
]


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


def _preset_config(cfg: InferenceConfig) -> "VrshqConfig":
    return PRESETS[cfg.preset]()


def model_config(cfg: InferenceConfig) -> "VrshqConfig":
    """The model's ``VrshqConfig``: the checkpoint's ``config.json`` if it has one, the preset adapted
    to a released checkpoint, else the preset's."""
    if cfg.checkpoint is not None:
        from vrshq.checkpoint.load import load_vrshq_config
        from vrshq.checkpoint.weight_files import CheckpointNotFoundError
        from vrshq.checkpoint.release import read_release_config

        release = read_release_config(cfg.checkpoint, cfg.storage_options)
        if release is not None:
            from vrshq.checkpoint.release import release_vrshq_config

            return release_vrshq_config(cfg.checkpoint, _preset_config(cfg), anchor=cfg.anchor,
                                        release_config=release, storage_options=cfg.storage_options)
        try:
            return load_vrshq_config(cfg.checkpoint, storage_options=cfg.storage_options)
        except CheckpointNotFoundError:
            pass  # a bare weights file: the preset gives the architecture
    return _preset_config(cfg)


def check_model_source(cfg: InferenceConfig) -> "VrshqConfig":
    """Fail fast (on the driver, before any Ray work) when the preset or checkpoint is unusable.

    Reads only small files: the checkpoint's ``config.json``, its index and the existence of its
    weights; for a released checkpoint also its tokenizer files and the anchor folder's. The strict
    key/shape check happens when each actor loads the weights, before its first video.

    Raises:
        ModelLoadError: naming the checkpoint URI (or the missing file) and the problem.
    """
    from vrshq.checkpoint.weight_files import CheckpointError
    from vrshq.checkpoint.release import ReleaseFileError, read_release_config

    release = None
    if cfg.checkpoint is not None:
        try:
            release = read_release_config(cfg.checkpoint, cfg.storage_options)
        except ReleaseFileError as exc:
            raise ModelLoadError(str(exc)) from exc
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"checkpoint {cfg.checkpoint!r} is not readable: {exc}") from exc
    if release is not None:
        from vrshq.checkpoint.release import check_release

        try:
            check_release(cfg.checkpoint, anchor=cfg.anchor, sam2=cfg.sam2, storage_options=cfg.storage_options,
                          anchor_image_size=_preset_config(cfg).anchor.vision_image_size)
        except (ReleaseFileError, CheckpointError) as exc:
            raise ModelLoadError(str(exc)) from exc
    elif cfg.anchor is not None or cfg.sam2 is not None:
        raise ModelLoadError(f"--anchor/--sam2 apply to a released VRS-HQ checkpoint; {cfg.checkpoint!r} is a vrshq "
                             "checkpoint, which holds its anchor and SAM2 weights")
    try:
        config = model_config(cfg)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure here is a config problem to report
        raise ModelLoadError(f"cannot get the model config (preset={cfg.preset!r}, checkpoint={cfg.checkpoint!r}): {exc}") from exc
    if cfg.checkpoint is not None and release is None:
        from pipelines.io.storage import filesystem_for

        try:
            fs, path = filesystem_for(cfg.checkpoint, cfg.storage_options)
            exists = fs.exists(path)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"checkpoint {cfg.checkpoint!r} is not readable: {exc}") from exc
        if not exists:
            raise ModelLoadError(
                f"checkpoint {cfg.checkpoint!r} does not exist; give a folder written by "
                "vrshq.checkpoint.save.save_vrshq_checkpoint, the released VRS-HQ folder, or preset=<name> "
                "seed=<n> for a random init"
            )
        from vrshq.checkpoint.weight_files import open_weight_files

        try:
            open_weight_files(cfg.checkpoint, cfg.storage_options)  # safetensors headers; pickles weights-only
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
    if cfg.checkpoint is not None and _is_release(cfg):
        return build_release_model(cfg, config, device=device, dtype=dtype)
    torch.manual_seed(cfg.seed)
    model = build_vrshq(config, device=device)
    if cfg.checkpoint is not None:
        from vrshq.checkpoint.load import load_vrshq_checkpoint
        from vrshq.checkpoint.weight_files import CheckpointError

        try:
            load_vrshq_checkpoint(model, cfg.checkpoint, storage_options=cfg.storage_options)
        except CheckpointError as exc:
            raise ModelLoadError(f"cannot load checkpoint {cfg.checkpoint!r}: {exc}") from exc
    if dtype != torch.float32:
        model.to(dtype=dtype)
    return model.eval()


def _is_release(cfg: InferenceConfig) -> bool:
    from vrshq.checkpoint.release import is_release_checkpoint

    return is_release_checkpoint(cfg.checkpoint, cfg.storage_options)


def build_release_model(
    cfg: InferenceConfig,
    config: "VrshqConfig | None" = None,
    *,
    device: "torch.device | str",
    dtype: "torch.dtype",
) -> Any:
    """:func:`vrshq.checkpoint.release.load_release` for an inference config (errors as :class:`ModelLoadError`)."""
    from vrshq.checkpoint.weight_files import CheckpointError
    from vrshq.checkpoint.release import ReleaseFileError, load_release

    try:
        return load_release(cfg.checkpoint, config if config is not None else model_config(cfg), anchor=cfg.anchor,
                            sam2=cfg.sam2, device=device, dtype=dtype, seed=cfg.seed,
                            storage_options=cfg.storage_options)
    except (CheckpointError, ReleaseFileError, ValueError, OSError) as exc:
        raise ModelLoadError(f"cannot load checkpoint {cfg.checkpoint!r}: {exc}") from exc
