"""Train VRS-HQ with Ray Train (DDP over ``num_workers`` workers), data streamed by Ray Data.

Checkpoints go to ``<storage_path>/<name>/step-<8 digits>/`` (trainable weights as safetensors,
optimiser + scheduler state, step, data position, per-step metrics CSV, validation J&F); the final
full model to ``<storage_path>/<name>/final`` (what ``jobs.infer --checkpoint`` loads). Running the
same command again continues a stopped run from its latest checkpoint; a worker that dies is
restarted from the last checkpoint up to ``max_failures`` times.

Examples::

    python -m jobs.train --storage-path s3://bucket/runs --name tiny-synthetic \\
        --data.root s3://bucket/synthetic --data.split train --model.preset tiny \\
        --optim.sam2-lr 0.0001 --optim.text-lr 0.001 max_steps=3000 num_workers=2
    ray job submit --working-dir . -- python -m jobs.train --config train.yaml use_gpu=true num_workers=8

Exit status: 0 when the run reached ``max_steps`` and the final model was exported; 1 when training
failed (after the allowed restarts), stopped early, or made no progress for ``stall_timeout_s``
seconds (the message names the stalled stage); 2 on a bad configuration, unreadable data, or
workers plus a clip-sampling task that do not fit the cluster (refused right after Ray starts).
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from jobs._cli import ConfigError, init_ray, log_config, parse_job_config, setup_logging
from pipelines.training.train_config import TrainConfig

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "main", "preflight"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_LOG = logging.getLogger("jobs.train")


def preflight(cfg: TrainConfig) -> list[str]:
    """Problems found before any Ray work: unreadable training/validation splits, an unusable
    ``init_checkpoint``, or GPUs asked for but absent here when running locally. Empty when fine."""
    from pipelines.io.storage import filesystem_for

    from pipelines.training.run import read_split

    problems = []
    try:
        if not read_split(cfg.data.format, cfg.data.root, cfg.data.split, cfg.storage_options):
            problems.append(f"data: {cfg.data.root} split {cfg.data.split!r} has no videos")
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        problems.append(f"data: cannot read {cfg.data.root} split {cfg.data.split!r}: {exc}")
    if cfg.validation.every_steps:
        val = cfg.validation
        try:
            read_split(val.format, val.root, val.split, cfg.storage_options)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"validation: cannot read {val.root} split {val.split!r}: {exc}")
    if cfg.model.init_checkpoint is not None:
        try:
            fs, path = filesystem_for(cfg.model.init_checkpoint, cfg.storage_options)
            if not fs.exists(path):
                problems.append(f"model.init_checkpoint {cfg.model.init_checkpoint!r} does not exist")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"model.init_checkpoint {cfg.model.init_checkpoint!r} is not readable: {exc}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, check it, train; return the exit status."""
    setup_logging()
    try:
        cfg = parse_job_config(TrainConfig, argv, module="jobs.train", doc=__doc__)
    except ConfigError as exc:
        print(f"jobs.train: {exc}", file=sys.stderr)
        return EXIT_USAGE
    log_config(cfg, logger=_LOG, secret_keys=("storage_options",))
    problems = preflight(cfg)
    if problems:
        print(f"jobs.train: {ConfigError(problems)}", file=sys.stderr)
        return EXIT_USAGE
    import ray

    from pipelines.training.train_guard import check_train_fits
    from pipelines.training.run import TrainingError, run_training

    init_ray()
    problems = check_train_fits(cfg, ray.cluster_resources())  # as jobs.infer: refuse what can never run
    if problems:
        print(f"jobs.train: {ConfigError(problems)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = run_training(cfg, log=_LOG.info)
    except TrainingError as exc:
        print(f"jobs.train: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _LOG.info("run %s: step %d, last checkpoint %s, final model %s, metrics %s", cfg.run_uri, result.step,
              result.checkpoint_uri, result.final_uri, result.metrics_uri)
    if result.step < cfg.max_steps or result.final_uri is None:
        print(f"jobs.train: the run stopped at step {result.step} of {cfg.max_steps} (the sample stream ended)",
              file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
