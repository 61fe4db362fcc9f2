"""The published VRS-HQ folder and the files that come beside it: what must be there, and local copies.

A release folder (local, ``s3://...`` or ``hf://<repo>``: huggingface_hub's fsspec filesystem) holds::

    config.json                                   the Chat-UniVi/LLaMA config (hidden sizes, vocab 32002)
    pytorch_model-0000i-of-0000n.bin + pytorch_model.bin.index.json   (or model*.safetensors + index)
    tokenizer.model, added_tokens.json, tokenizer_config.json, special_tokens_map.json   (slow LLaMA tokenizer)

It is told apart from a vrshq checkpoint by its ``config.json``, which has no ``vrshq_format_version``.
The CLIP ViT-L/14-336 anchor is not in it: it comes from a folder in the
``openai/clip-vit-large-patch14-336`` layout (``config.json``, ``pytorch_model.bin`` or
``model.safetensors``, the CLIP tokenizer files, ``preprocessor_config.json``). SAM2 is in the release
(``model.visual_model.*``); a SAM2 checkpoint (``sam2_hiera_large.pt``) is only needed for a folder
without it.

Every check here reads listings and small files only, so a job can refuse a missing file before it
starts any work; the error names the file and where to get it. Tokenizer and anchor files are read by
``transformers`` from a local folder, so remote ones are copied once into a cache folder
(``$VRSHQ_CACHE``, default ``~/.cache/vrshq``) with fsspec.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from vrshq.storage import filesystem_for, join_uri

logger = logging.getLogger(__name__)

__all__ = [
    "ANCHOR_SOURCE",
    "RANDOM_ANCHOR",
    "RELEASE_SOURCE",
    "SAM2_SOURCE",
    "ReleaseFileError",
    "anchor_files",
    "check_anchor_folder",
    "check_release",
    "check_release_tokenizer",
    "check_sam2_file",
    "is_release_checkpoint",
    "load_release",
    "local_copy",
    "read_release_config",
    "release_llm_config",
    "release_vrshq_config",
]

RELEASE_SOURCE = "the VRS-HQ release (the VRS-HQ-7B weights linked from https://github.com/SitongGong/VRS-HQ)"
ANCHOR_SOURCE = "https://huggingface.co/openai/clip-vit-large-patch14-336 (pass --anchor hf://openai/clip-vit-large-patch14-336)"
SAM2_SOURCE = "https://huggingface.co/facebook/sam2-hiera-large (sam2_hiera_large.pt)"
RANDOM_ANCHOR = "random"
"""The ``--anchor`` value that asks for a randomly initialised anchor CLIP model (tests, benchmarks)."""

_TOKENIZER_REQUIRED = ("tokenizer.model",)
_TOKENIZER_OPTIONAL = ("added_tokens.json", "tokenizer_config.json", "special_tokens_map.json")
_ANCHOR_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_ANCHOR_TOKENIZER = (("tokenizer.json",), ("vocab.json", "merges.txt"))
_ANCHOR_OPTIONAL = ("tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt", "tokenizer.json")


class ReleaseFileError(FileNotFoundError):
    """A file of the release, of the anchor folder or a SAM2 checkpoint is missing or unreadable.

    Attributes:
        uri: the missing file (or folder).
    """

    def __init__(self, uri: str, message: str) -> None:
        super().__init__(f"{uri}: {message}")
        self.uri = uri


def _fs(uri: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    try:
        fs, path = filesystem_for(uri, storage_options)
    except (ImportError, ValueError) as exc:  # e.g. hf:// without huggingface_hub, an unknown protocol
        raise ReleaseFileError(uri, f"cannot open this URI: {exc}") from exc
    return fs, path.rstrip("/") or path


def _isfile(fs: Any, path: str) -> bool:
    try:
        return bool(fs.isfile(path))
    except (OSError, ValueError):
        return False


def read_release_config(uri: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The ``config.json`` of a release folder, or None when ``uri`` holds no ``config.json`` or one
    written by vrshq (``vrshq_format_version``).

    Raises:
        ReleaseFileError: ``config.json`` is not a JSON object.
    """
    fs, path = _fs(uri, storage_options)
    config_path = f"{path}/config.json"
    if not _isfile(fs, config_path):
        return None
    with fs.open(config_path, "r") as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as exc:
            raise ReleaseFileError(join_uri(uri, "config.json"), f"not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ReleaseFileError(join_uri(uri, "config.json"), "expected a JSON object")
    return None if "vrshq_format_version" in data else data


def is_release_checkpoint(uri: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether ``uri`` is a folder in the published layout (a ``config.json`` not written by vrshq)."""
    return read_release_config(uri, storage_options) is not None


def release_llm_config(llm: Any, release_config: Mapping[str, Any], *, tokenizer_path: str | None) -> Any:
    """``llm`` (an ``LlmConfig``) with the sizes of the release's ``config.json`` and its tokenizer.

    ``vocab_size`` there counts ``[SEG]``/``[TAK]`` (32002), ``LlmConfig.vocab_size`` does not (32000).

    Raises:
        ValueError: a size is missing or not a positive integer (naming the key).
    """
    def size(key: str, default: Any = None) -> Any:
        value = release_config.get(key, default)
        if value is None:
            raise ValueError(f"config.json has no {key!r}; is this the release's config?")
        return value

    heads = size("num_attention_heads")
    fields = {
        "vocab_size": int(size("vocab_size")) - 2,
        "hidden_size": size("hidden_size"),
        "intermediate_size": size("intermediate_size"),
        "num_hidden_layers": size("num_hidden_layers"),
        "num_attention_heads": heads,
        "num_key_value_heads": release_config.get("num_key_value_heads") or heads,
        "max_position_embeddings": size("max_position_embeddings", llm.max_position_embeddings),
        "rms_norm_eps": float(size("rms_norm_eps", llm.rms_norm_eps)),
        "rope_theta": float(release_config.get("rope_theta") or llm.rope_theta),
        "tokenizer": "llama",
        "tokenizer_path": tokenizer_path,
    }
    return dataclasses.replace(llm, **fields)


def check_release_tokenizer(uri: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`ReleaseFileError` unless the release folder holds ``tokenizer.model``."""
    fs, path = _fs(uri, storage_options)
    for name in _TOKENIZER_REQUIRED:
        if not _isfile(fs, f"{path}/{name}"):
            raise ReleaseFileError(
                join_uri(uri, name),
                f"missing: the released weights come with the slow LLaMA tokenizer ({name}, "
                f"{', '.join(_TOKENIZER_OPTIONAL)}); copy those files of {RELEASE_SOURCE} into the checkpoint folder")


def anchor_files(uri: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """The names of the anchor folder's files that vrshq reads (weights excluded), checked to exist.

    Raises:
        ReleaseFileError: the folder, ``config.json``, the weights, the CLIP tokenizer files or
            ``preprocessor_config.json`` are missing (naming the first missing one).
    """
    fs, path = _fs(uri, storage_options)
    where = f"download the files of {ANCHOR_SOURCE}, or pass --anchor {RANDOM_ANCHOR} for a random anchor"
    try:
        is_dir = fs.isdir(path)
    except (OSError, ValueError):
        is_dir = False
    if not is_dir:
        raise ReleaseFileError(uri, f"no such folder: the CLIP ViT-L/14-336 anchor model is not part of the "
                                    f"released weights; {where}")
    for name in ("config.json", "preprocessor_config.json"):
        if not _isfile(fs, f"{path}/{name}"):
            raise ReleaseFileError(join_uri(uri, name), f"missing from the anchor folder; {where}")
    if not any(_isfile(fs, f"{path}/{name}") for name in _ANCHOR_WEIGHTS):
        raise ReleaseFileError(join_uri(uri, _ANCHOR_WEIGHTS[1]), f"missing from the anchor folder (or "
                                                              f"{_ANCHOR_WEIGHTS[0]}); {where}")
    if not any(all(_isfile(fs, f"{path}/{n}") for n in group) for group in _ANCHOR_TOKENIZER):
        raise ReleaseFileError(join_uri(uri, "vocab.json"), f"the anchor folder has no CLIP tokenizer (vocab.json "
                                                        f"and merges.txt, or tokenizer.json); {where}")
    return ["config.json", "preprocessor_config.json",
            *(n for n in _ANCHOR_OPTIONAL if _isfile(fs, f"{path}/{n}"))]


def check_anchor_folder(uri: str, image_size: int, storage_options: Mapping[str, Any] | None = None) -> None:
    """:func:`anchor_files`, and that ``preprocessor_config.json`` crops to the anchor's image size."""
    anchor_files(uri, storage_options)
    fs, path = _fs(uri, storage_options)
    with fs.open(f"{path}/preprocessor_config.json", "r") as handle:
        try:
            pre = json.load(handle)
        except json.JSONDecodeError as exc:
            raise ReleaseFileError(join_uri(uri, "preprocessor_config.json"), f"not valid JSON ({exc})") from exc
    crop = pre.get("crop_size") if isinstance(pre, dict) else None
    crop = crop.get("height") if isinstance(crop, dict) else crop
    if crop is not None and crop != image_size:
        raise ReleaseFileError(join_uri(uri, "preprocessor_config.json"),
                               f"crops to {crop} px, the anchor model of this preset is {image_size} px: is this "
                               f"{ANCHOR_SOURCE.split(' ')[0]}?")


def check_sam2_file(uri: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`ReleaseFileError` unless ``uri`` is a file or a folder with weights."""
    fs, path = _fs(uri, storage_options)
    try:
        exists = fs.exists(path)
    except (OSError, ValueError):
        exists = False
    if not exists:
        raise ReleaseFileError(uri, f"no SAM2 checkpoint there; get {SAM2_SOURCE}")


def _cache_root() -> str:
    return os.environ.get("VRSHQ_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vrshq")


def local_copy(uri: str, names: list[str] | tuple[str, ...], storage_options: Mapping[str, Any] | None = None) -> str:
    """A local folder holding ``names`` of the folder ``uri``: ``uri`` itself when it is local, else a
    cache folder (one per URI) where missing or changed-size files are copied with fsspec.

    Raises:
        ReleaseFileError: a file is missing.
    """
    fs, path = _fs(uri, storage_options)
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return path
    target = os.path.join(_cache_root(), "files", hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16])
    os.makedirs(target, exist_ok=True)
    for name in names:
        remote = f"{path}/{name}"
        try:
            size = fs.size(remote)
        except (OSError, ValueError) as exc:
            raise ReleaseFileError(join_uri(uri, name), f"missing or unreadable ({exc})") from exc
        local = os.path.join(target, name)
        if os.path.isfile(local) and os.path.getsize(local) == size:
            continue
        partial = f"{local}.{os.getpid()}.partial"  # actors of one node may copy at once: each its own file
        fs.get_file(remote, partial)
        os.replace(partial, local)
    return target


def _index_keys(uri: str, storage_options: Mapping[str, Any] | None) -> list[str]:
    """Tensor names of a folder's index file (no weights read); empty without an index."""
    fs, path = _fs(uri, storage_options)
    for name in ("pytorch_model.bin.index.json", "model.safetensors.index.json"):
        if _isfile(fs, f"{path}/{name}"):
            with fs.open(f"{path}/{name}", "r") as handle:
                weight_map = json.load(handle).get("weight_map")
            return list(weight_map) if isinstance(weight_map, dict) else []
    return []


def check_release(
    uri: str,
    *,
    anchor: str | None,
    sam2: str | None = None,
    anchor_image_size: int = 336,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Every file that loading the release folder ``uri`` needs, before any work: its weight files (a
    local folder's pickles pass the weights-only check, memory-mapped; a remote one's are checked to
    exist), ``tokenizer.model``, the anchor folder (unless ``anchor`` is ``"random"``), and SAM2.

    Raises:
        ReleaseFileError: naming the missing file and where to get it.
        CheckpointError: an unreadable or unsafe weight file, or a broken index.
    """
    from vrshq.checkpoint.weight_files import list_weight_files, open_weight_files

    fs, _ = _fs(uri, storage_options)
    if isinstance(fs, LocalFileSystem):
        open_weight_files(uri, storage_options)
    else:  # a remote release is not copied to check it
        list_weight_files(uri, storage_options)
    check_release_tokenizer(uri, storage_options)
    keys = _index_keys(uri, storage_options)
    if anchor is None and not any(k.startswith("clip_model.") for k in keys):
        raise ReleaseFileError(
            uri, f"the released VRS-HQ weights do not hold the CLIP ViT-L/14-336 anchor model: pass --anchor <folder> "
                 f"with the files of {ANCHOR_SOURCE}, or --anchor {RANDOM_ANCHOR} to pick frames with a random anchor")
    if anchor is not None and anchor != RANDOM_ANCHOR:
        check_anchor_folder(anchor, anchor_image_size, storage_options)
    if sam2 is not None:
        check_sam2_file(sam2, storage_options)
    elif keys and not any(k.startswith("model.visual_model.") for k in keys):
        raise ReleaseFileError(uri, f"holds no SAM2 weights (model.visual_model.*): pass --sam2 <file> with {SAM2_SOURCE}")


def release_vrshq_config(
    uri: str,
    base: Any,
    *,
    anchor: str | None,
    release_config: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Any:
    """``base`` (a preset's ``VrshqConfig``) adapted to the release folder ``uri``: the LLM sizes of its
    ``config.json``, a local copy of its tokenizer files, the anchor folder's tokenizer (its weights
    load with the release's), no weight paths (every weight comes from the files).

    Raises:
        ReleaseFileError: ``uri`` is not a release folder, or a file is missing.
    """
    from vrshq.model.tokenizer import LLAMA_TOKENIZER_FILES

    release = release_config if release_config is not None else read_release_config(uri, storage_options)
    if release is None:
        raise ReleaseFileError(join_uri(uri, "config.json"), "missing, or written by vrshq: not a released folder")
    fs, path = _fs(uri, storage_options)
    tokenizer_dir = local_copy(uri, [n for n in LLAMA_TOKENIZER_FILES if _isfile(fs, f"{path}/{n}")], storage_options)
    llm = release_llm_config(base.llm, release, tokenizer_path=tokenizer_dir)
    select_layer = int(release.get("mm_vision_select_layer", base.vision.select_layer))
    vision = dataclasses.replace(base.vision, weights_path=None, select_layer=select_layer)
    anchor_tokenizer = None
    if anchor is not None and anchor != RANDOM_ANCHOR:
        anchor_tokenizer = local_copy(anchor, anchor_files(anchor, storage_options), storage_options)
    anchor_cfg = dataclasses.replace(base.anchor, weights_path=None, tokenizer_path=anchor_tokenizer)
    sam2 = dataclasses.replace(base.sam2, checkpoint_uri=None)
    return dataclasses.replace(base, llm=llm, vision=vision, anchor=anchor_cfg, sam2=sam2)


def load_release(
    uri: str,
    config: Any = None,
    *,
    anchor: str | None,
    sam2: str | None = None,
    device: Any = "cpu",
    dtype: Any = None,
    seed: int = 0,
    storage_options: Mapping[str, Any] | None = None,
    timings: dict[str, float] | None = None,
) -> Any:
    """Build a ``VrshqModel`` from the release folder ``uri`` as published, in eval mode.

    Every parameter is created on the meta device (buffers real), then the release's shards, the
    anchor folder's weights and ``sam2``'s are read one file at a time and each tensor materialised
    on ``device`` in ``dtype`` (strict: a missing, extra or mis-shaped key is an error), so host
    memory holds one shard, not a second copy of the model.

    Args:
        uri: the release folder (local, ``s3://``, ``hf://<repo>``).
        config: the ``VrshqConfig`` (default: the ``vrshq-7b`` preset adapted with
            :func:`release_vrshq_config`).
        anchor: the ``openai/clip-vit-large-patch14-336`` folder, or ``"random"`` for a random anchor
            (logged as a warning); None only if the checkpoint holds ``clip_model.*``.
        sam2: a SAM2 checkpoint, loaded after the release (replacing its SAM2), or None.
        device, dtype: where the model lives and its floating dtype (default float32).
        seed: seeds the random anchor.
        timings: filled with seconds spent on ``build`` (config, tokenizer, empty model), ``read``
            (opening and unpickling the files), ``copy`` (materialising each tensor on ``device``,
            which for memory-mapped files includes reading their pages) and ``finish`` (the rest).

    Example::

        model = load_release("hf://<release repo>", anchor="hf://openai/clip-vit-large-patch14-336",
                             device="cuda", dtype=torch.bfloat16)
        results = model.segment_video(frames, ["the dog that jumps first"])
    """
    import torch
    from accelerate import init_empty_weights

    from vrshq.builders import build_vrshq, vrshq_7b_config
    from vrshq.model.frame_sampling import build_clip_model
    from vrshq.checkpoint.official_names import load_official_checkpoint

    import time

    start = time.perf_counter()
    if config is None:
        config = release_vrshq_config(uri, vrshq_7b_config(), anchor=anchor, storage_options=storage_options)
    device = torch.device(device)
    dtype = torch.float32 if dtype is None else dtype
    random_anchor = anchor in (None, RANDOM_ANCHOR)
    torch.manual_seed(seed)
    with init_empty_weights(include_buffers=False):
        model = build_vrshq(config)
    built = time.perf_counter()
    report = load_official_checkpoint(model, uri, storage_options=storage_options,
                                      anchor_uri=None if random_anchor else anchor, sam2_uri=sam2,
                                      allow_missing_anchor=random_anchor, device=device, dtype=dtype)
    loaded = time.perf_counter()
    if random_anchor and any(p.is_meta for p in model.anchor.clip_model.parameters()):
        if anchor is None:
            raise ReleaseFileError(uri, f"holds no CLIP-336 anchor (clip_model.*): pass anchor=<folder> ({ANCHOR_SOURCE}) "
                                        f"or anchor={RANDOM_ANCHOR!r}")
        logger.warning("anchor=%s: frames are picked by a randomly initialised CLIP model", RANDOM_ANCHOR)
        model.anchor.clip_model = build_clip_model(config.anchor).requires_grad_(False).eval()
    still_meta = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if still_meta:
        raise ReleaseFileError(uri, f"{len(still_meta)} tensor(s) got no weights: {still_meta[:20]}")
    model.to(device=device, dtype=dtype)
    model.eval()
    if timings is not None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings.update(build=built - start, read=report.read_seconds, copy=report.copy_seconds,
                       finish=time.perf_counter() - loaded + (loaded - built - report.read_seconds - report.copy_seconds))
    return model
