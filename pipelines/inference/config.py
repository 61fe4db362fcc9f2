"""Typed runtime configuration of the offline inference pipeline (``jobs.infer``).

Model hyperparameters live in ``vrshq/config.py``; this file holds only *runtime* settings: where
the input and output are, which model preset/checkpoint to load, and how many Ray actors and tasks
to run. Every field is read by the pipeline; each config lists its problems (``problems()``) and
``__post_init__`` raises them all at once in one ``vrshq.validation.ConfigError`` (as ``jobs._cli``
expects), so a bad command line fails before any Ray work starts.

The dataset spec (:class:`DatasetConfig`: ``dataset.format / dataset.root / dataset.split /
dataset.name``) lives here, not in ``jobs/``, because ``pipelines/`` must not import ``jobs/``; the
jobs (``infer``, ``evaluate``, ``report``, ``export``) all use this one class, so a dataset is named
the same way on every command line (``--dataset.root s3://...``).

Example:
    >>> cfg = InferenceConfig(out="/tmp/out", manifest="/tmp/manifest.parquet")
    >>> cfg.compute.num_actors, cfg.model_name
    (1, 'tiny')
    >>> InferenceConfig(out="/tmp/out", dataset=DatasetConfig(root="/data/ReVOS")).dataset.table_name
    'revos'
    >>> InferenceConfig(out="/tmp/out")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    vrshq.validation.ConfigError: invalid InferenceConfig:
      - give exactly one input: manifest=<uri> or dataset.root=<uri> (with dataset.format, dataset.split)
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vrshq.presets import PRESETS
from vrshq.validation import ConfigError, Validated

__all__ = [
    "ComputeConfig",
    "ConfigError",
    "DatasetConfig",
    "InferenceConfig",
    "MODEL_DTYPES",
    "DATASET_READERS",
    "SCORE_ON",
    "is_safe_partition_value",
    "read_dataset",
    "redact",
]

#: ``InferenceConfig.dtype`` values; ``auto`` is resolved per device by ``pipelines.inference.model_loader``.
MODEL_DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")

#: Dataset name -> reader function of ``vrshq.data`` (``reader(root, split=..., storage_options=...)``).
DATASET_READERS: dict[str, str] = {"revos": "read_revos", "mevis": "read_mevis"}

#: Partition values become folder names (``dataset=<v>/split=<v>``): keep them to a safe alphabet.
_PARTITION_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

#: Keys whose values never reach logs, ``run.json`` or error rows (matched case-insensitively as
#: substrings, so ``aws_secret_access_key`` and ``client_kwargs.token`` are caught too).
_SECRET_KEY_PARTS = ("key", "secret", "token", "password", "credential", "session")


def redact(value: Any) -> Any:
    """A copy of a nested config/dict with every secret-looking value replaced by ``"***"``.

    >>> redact({"key": "AKIA", "client_kwargs": {"endpoint_url": "http://s3", "aws_session_token": "x"}})
    {'key': '***', 'client_kwargs': {'endpoint_url': 'http://s3', 'aws_session_token': '***'}}
    """
    if isinstance(value, Mapping):
        return {
            k: ("***" if any(part in str(k).lower() for part in _SECRET_KEY_PARTS) else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


@dataclass(frozen=True)
class DatasetConfig(Validated):
    """Which dataset split to read (frames and ground truth): ``--dataset.format/root/split/name``."""

    format: str = field(default="revos", metadata={"help": f"dataset layout: {' | '.join(DATASET_READERS)}"})
    root: str = field(default="", metadata={"help": "dataset root URI (local path or s3://...)"})
    split: str = field(default="valid", metadata={"help": "split name, e.g. valid, valid_u"})
    name: str | None = field(default=None, metadata={"help": "dataset name in the tables (default: the format)"})

    def problems(self) -> list[str]:
        """Every problem of this config's own fields (``vrshq.validation``)."""
        problems = []
        if self.format not in DATASET_READERS:
            problems.append(f"format={self.format!r}: must be one of {list(DATASET_READERS)}")
        if not self.root:
            problems.append("root is required (the dataset root URI)")
        if not self.split:
            problems.append("split must be non-empty")
        return problems

    @property
    def table_name(self) -> str:
        """The ``dataset`` column / partition value of the rows read from it: ``name``, else ``format``."""
        return self.name or self.format


def read_dataset(cfg: DatasetConfig, *, storage_options: Mapping[str, Any] | None = None,
                 problems: list[Any] | None = None) -> list[Any]:
    """The split's ``VideoRecord`` list, read with the ``vrshq.data`` reader of ``cfg.format``.

    ``problems``: None fails on any bad record; a list receives the bad records
    (``vrshq.data.RecordProblem``) while the good ones are returned.
    """
    import vrshq.data as data

    reader = getattr(data, DATASET_READERS[cfg.format])
    return list(reader(cfg.root, split=cfg.split, storage_options=dict(storage_options or {}) or None,
                       dataset=cfg.table_name, problems=problems))


#: ``ComputeConfig.score_on`` values: the stage that scores masks against the ground truth.
SCORE_ON: tuple[str, ...] = ("actor", "writer")


@dataclass(frozen=True)
class ComputeConfig(Validated):
    """How much Ray parallelism each stage gets.

    The GPU (or CPU) model actors are the expensive stage; frame decoding runs in CPU tasks in front
    of them and scoring/writing in a small CPU actor pool behind them, so the actors never wait on
    storage and never hold a video longer than its forward pass.
    """

    num_actors: int = field(default=1, metadata={"help": "model actors (one model copy each)"})
    max_actors: int | None = field(
        default=None,
        metadata={"help": "null: a fixed pool of num_actors model actors; else an autoscaling pool of num_actors "
                          "to max_actors (Ray Data adds actors while inputs queue and the cluster has room)"},
    )
    num_gpus_per_actor: float | None = field(
        default=None,
        metadata={"help": "GPUs per model actor; null: 1 if the cluster has GPUs, else 0 (CPU actors)"},
    )
    num_cpus_per_actor: float = field(default=1.0, metadata={"help": "CPUs reserved per model actor"})
    read_num_cpus: float = field(
        default=0.5, metadata={"help": "CPUs per frame-reading task (I/O bound: half a CPU by default)"}
    )
    read_concurrency: int = field(default=2, metadata={"help": "frame-reading tasks in flight at most"})
    num_writers: int = field(default=1, metadata={"help": "scoring+writing CPU actors"})
    writer_num_cpus: float = field(default=0.5, metadata={"help": "CPUs reserved per scoring+writing actor"})
    score_on: str = field(
        default="actor",
        metadata={"help": "where J, F, A and R are computed against the ground truth: actor (on the model actor's "
                          "device, chunk by chunk as the masks are made) or writer (on the writers' CPUs from the "
                          "RLE masks); both give the same scores table"},
    )
    videos_per_file: int = field(
        default=4,
        metadata={"help": "videos per output Parquet file (also the most a crash can lose per writer)"},
    )
    manifest_rows_per_block: int = field(
        default=256,
        metadata={"help": "manifest rows a work-item task reads at a time (its videos then travel one per block "
                          "to the readers and model actors)"},
    )
    max_inline_frame_bytes: int = field(
        default=512 * 2**20,
        metadata={
            "help": "videos whose resized frames exceed this many bytes are not passed through the object "
            "store; the model actor reads them itself"
        },
    )

    def problems(self) -> list[str]:
        """Every problem of this config's own fields (``vrshq.validation``)."""
        problems = []
        for name in ("num_actors", "read_concurrency", "num_writers", "videos_per_file", "manifest_rows_per_block"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"compute.{name} must be an integer >= 1, got {value!r}")
        for name in ("num_cpus_per_actor", "read_num_cpus", "writer_num_cpus"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                problems.append(f"compute.{name} must be a number >= 0, got {value!r}")
        if self.score_on not in SCORE_ON:
            problems.append(f"compute.score_on must be one of {' | '.join(SCORE_ON)}, got {self.score_on!r}")
        if self.max_actors is not None and (not isinstance(self.max_actors, int) or isinstance(self.max_actors, bool)
                                            or self.max_actors < self.num_actors):
            problems.append(f"compute.max_actors must be null or an integer >= num_actors, got {self.max_actors!r}")
        if self.num_gpus_per_actor is not None and (
            not isinstance(self.num_gpus_per_actor, (int, float)) or self.num_gpus_per_actor < 0
        ):
            problems.append(f"compute.num_gpus_per_actor must be null or >= 0, got {self.num_gpus_per_actor!r}")
        if not isinstance(self.max_inline_frame_bytes, int) or self.max_inline_frame_bytes < 1:
            problems.append(
                f"compute.max_inline_frame_bytes must be a positive integer, got {self.max_inline_frame_bytes!r}"
            )
        return problems


@dataclass(frozen=True)
class InferenceConfig(Validated):
    """Everything ``jobs.infer`` needs: input, output, model and compute.

    Input is either a manifest Parquet (``schemas.MANIFEST_SCHEMA``, one row per (video,
    expression)) or a dataset read by ``vrshq.data`` (``dataset``: a :class:`DatasetConfig`).
    The model is a preset with random init (``seed``; demos and tests) or a preset plus a
    ``checkpoint`` URI.

    Raises:
        ConfigError: (a ValueError) listing every problem of the config (no input or two inputs, unknown
            dataset or preset, unsafe partition names, non-positive sizes...).
    """

    out: str = field(metadata={"help": "output URI (local path or s3://bucket/prefix)"})
    manifest: str | None = field(
        default=None, metadata={"help": "manifest Parquet URI (MANIFEST_SCHEMA); or give --dataset.*"}
    )
    dataset: DatasetConfig | None = field(default=None, metadata={"help": "dataset input; or give --manifest"})
    preset: str = field(default="tiny", metadata={"help": f"model preset (vrshq.presets.PRESETS): {sorted(PRESETS)}"})
    checkpoint: str | None = field(
        default=None,
        metadata={"help": "checkpoint URI (local, s3://, hf://<repo>): a vrshq checkpoint, or the released VRS-HQ "
                  "folder as published (sharded .bin/.safetensors + index, config.json, slow tokenizer files); "
                  "null: random init from seed (demos, tests)"},
    )
    anchor: str | None = field(
        default=None,
        metadata={"help": "the CLIP ViT-L/14-336 anchor model for a released checkpoint, which does not hold it: a "
                  "folder in the openai/clip-vit-large-patch14-336 layout (local, s3://, "
                  "hf://openai/clip-vit-large-patch14-336), or 'random' for a random anchor (tests, benchmarks)"},
    )
    sam2: str | None = field(
        default=None,
        metadata={"help": "a SAM2 checkpoint (e.g. sam2_hiera_large.pt; local, s3://, hf://) for a released "
                  "checkpoint without SAM2 weights; it replaces the checkpoint's SAM2 where both exist"},
    )
    seed: int = field(default=0, metadata={"help": "torch seed of the random init (no checkpoint)"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda: where the model actors run"})
    dtype: str = field(
        default="auto",
        metadata={
            "help": "auto | float32 | bfloat16 | float16: parameter dtype of the model actors; auto: bfloat16 "
            "on CUDA (half the memory, no per-op weight casts under autocast), float32 on CPU"
        },
    )
    max_side: int | None = field(
        default=None,
        metadata={
            "help": "frames are resized so their longer side is at most this before the model (its mask "
            "logits are resized back to the original size); null: the model's SAM2 image size; 0: never resize"
        },
    )
    max_videos: int | None = field(default=None, metadata={"help": "process at most this many pending videos"})
    storage_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "fsspec storage options for every URI (given to every Ray task; never logged)"},
    )
    run_id: str | None = field(default=None, metadata={"help": "run id; null: a fresh one"})
    code_version: str | None = field(default=None, metadata={"help": "code version; null: git sha or package version"})
    progress_every: int = field(default=10, metadata={"help": "log a progress line every N videos"})
    allow_out_in_dataset: bool = field(
        default=False,
        metadata={"help": "allow out inside dataset.root (refused by default: results would land among the "
                          "dataset's files)"},
    )
    break_lock: bool = field(
        default=False, metadata={"help": "take over the output lock even if another run seems alive"}
    )
    lock_stale_after_s: float = field(
        default=300.0, metadata={"help": "a lock whose heartbeat is older than this is stale"}
    )
    compute: ComputeConfig = field(default_factory=ComputeConfig)

    def problems(self) -> list[str]:
        """Every problem of this config's own fields (``vrshq.validation``)."""
        problems: list[str] = []
        if not isinstance(self.out, str) or not self.out.strip():
            problems.append(f"out must be a non-empty URI, got {self.out!r}")
        if (self.manifest is None) == (self.dataset is None):
            problems.append(
                "give exactly one input: manifest=<uri> or dataset.root=<uri> (with dataset.format, dataset.split)"
            )
        if self.dataset is not None and not isinstance(self.dataset, DatasetConfig):
            problems.append(f"dataset must be a DatasetConfig (dataset.format, dataset.root, dataset.split, "
                            f"dataset.name), got {self.dataset!r}")
        elif self.dataset is not None:
            for key, value in (("split", self.dataset.split), ("name", self.dataset.table_name)):
                if not _PARTITION_VALUE.match(str(value)):
                    problems.append(f"dataset.{key}={value!r} must match {_PARTITION_VALUE.pattern} "
                                    f"(it becomes a folder name)")
        for name in ("anchor", "sam2"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                problems.append(f"{name} must be null or a non-empty URI, got {value!r}")
            elif value is not None and self.checkpoint is None:
                problems.append(f"{name}={value!r} applies to a released checkpoint (--checkpoint <release folder>); "
                                "without a checkpoint every weight is random")
        if self.preset not in PRESETS:
            problems.append(f"preset={self.preset!r} is unknown; known: {sorted(PRESETS)}")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            problems.append(f"device={self.device!r} must be auto, cpu, cuda or cuda:<i>")
        if self.dtype not in MODEL_DTYPES:
            problems.append(f"dtype={self.dtype!r} must be one of {list(MODEL_DTYPES)}")
        if self.max_side is not None and (not isinstance(self.max_side, int) or self.max_side < 0):
            problems.append(f"max_side must be null, 0 or a positive integer, got {self.max_side!r}")
        if self.max_videos is not None and (not isinstance(self.max_videos, int) or self.max_videos < 1):
            problems.append(f"max_videos must be null or >= 1, got {self.max_videos!r}")
        if not isinstance(self.progress_every, int) or self.progress_every < 1:
            problems.append(f"progress_every must be >= 1, got {self.progress_every!r}")
        if not isinstance(self.storage_options, Mapping):
            problems.append(f"storage_options must be a mapping, got {type(self.storage_options).__name__}")
        if self.run_id is not None and not _PARTITION_VALUE.match(self.run_id):
            problems.append(f"run_id={self.run_id!r} must match {_PARTITION_VALUE.pattern}")
        if self.lock_stale_after_s <= 0:
            problems.append(f"lock_stale_after_s must be > 0, got {self.lock_stale_after_s!r}")
        return problems

    @property
    def model_name(self) -> str:
        """The ``model`` column of output rows: the preset, plus the checkpoint's file name if any."""
        if self.checkpoint is None:
            return self.preset if self.seed == 0 else f"{self.preset}-seed{self.seed}"
        return f"{self.preset}:{self.checkpoint.rstrip('/').rsplit('/', 1)[-1]}"

    def public_dict(self) -> dict[str, Any]:
        """The config as a plain dict with credentials masked (for logs and ``run.json``)."""
        from dataclasses import asdict

        return redact(asdict(self))


def is_safe_partition_value(value: str) -> bool:
    """Whether ``value`` may be a hive partition folder value (``dataset=<value>``)."""
    return bool(_PARTITION_VALUE.match(value))
