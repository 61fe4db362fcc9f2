"""Segment every (video, expression) of a dataset or manifest: masks, J&F scores and errors as Parquet.

Output, under ``--out``: ``masks/``, ``scores/``, ``errors/`` (hive-partitioned by dataset and
split), ``run.json`` (config without credentials, code version, checkpoint, counts) and
``runs/<run_id>.json`` per run. Idempotent: a rerun skips the pairs already scored, so the same
command on a schedule only does new work (a manifest of new videos appends).

Input: ``--manifest URI`` or a dataset, named as in every job: ``--dataset.format revos|mevis
--dataset.root URI --dataset.split S`` (``--dataset.name`` for the tables, default: the format).
Run locally or on a Ray cluster::

    python -m jobs.infer --dataset.format revos --dataset.root s3://bucket/ReVOS --dataset.split valid \\
        --out s3://bucket/runs/vrshq-7b --preset vrshq-7b --checkpoint s3://bucket/ckpt/vrshq-7b
    ray job submit --working-dir . -- python -m jobs.infer --manifest s3://bucket/new_videos.parquet \\
        --out s3://bucket/runs/vrshq-7b --preset vrshq-7b --checkpoint s3://bucket/ckpt/vrshq-7b \\
        compute.num_actors=8
    python -m jobs.infer --manifest m.parquet --out /tmp/out --preset tiny --seed 0   # random-init demo

The released VRS-HQ-7B folder loads as published (sharded .bin/.safetensors, config.json, slow
tokenizer files); the CLIP ViT-L/14-336 anchor model, which it does not hold, is its own option
(``--anchor random`` for a random one); see docs/released-weights.md::

    python -m jobs.infer --manifest m.parquet --out /tmp/out --preset vrshq-7b --checkpoint /models/VRS-HQ-7B \
        --anchor hf://openai/clip-vit-large-patch14-336

On a schedule (bulk annotation): run the same command from cron or a CI timer; each run only does
what is missing and appends, so overlapping schedules are safe (the second run is refused while the
first holds ``<out>/_lock.json``, exit status 3)::

    */30 * * * * cd /srv/vrshq && ray job submit --working-dir . -- python -m jobs.infer \
        --config jobs/configs/infer_revos.yaml dataset=null --manifest s3://bucket/incoming/latest.parquet

Renamed options (no aliases; the old names fail with a message naming the new ones): ``--output``
is ``--out``; ``--dataset NAME --root URI --split S`` is ``--dataset.format NAME --dataset.root URI
--dataset.split S``; the same holds for ``key=value`` overrides and ``--config`` YAML keys.

Exit status: 0 when every pending expression was scored; 1 when error rows were written (bad
records, unreadable frames, missing ground truth: the other videos are still done); 2, before Ray
starts and leaving nothing behind, on a bad configuration or checkpoint, an output that cannot be
written or lies inside the dataset root (unless ``allow_out_in_dataset=true``), input that cannot be
parsed at all (a meta, manifest or annotation file), or a compute config the cluster cannot
schedule; 3 when another run holds the output lock; 4 when the run failed midway (e.g. the model
actors could not load the checkpoint); a rerun resumes after the last committed batch.

Ids and names in the data (video ids, frame names, mp4 names) become paths only under their root:
one with a ``..``, ``.`` or empty segment, an absolute form or a control character is an error row
of its record, on S3 and local paths alike.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Sequence

from jobs._cli import ConfigError, code_version, init_ray, log_config, parse_job_config, setup_logging
from pipelines.inference.config import InferenceConfig

__all__ = ["EXIT_ERRORS", "EXIT_FAILED", "EXIT_LOCKED", "EXIT_OK", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_ERRORS = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3
EXIT_FAILED = 4

_LOG = logging.getLogger("jobs.infer")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, check everything, run the pipeline; return the exit status."""
    setup_logging()
    try:
        cfg = parse_job_config(InferenceConfig, argv, module="jobs.infer", doc=__doc__)
    except ConfigError as exc:
        print(f"jobs.infer: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if cfg.code_version is None:
        cfg = dataclasses.replace(cfg, code_version=code_version())
    log_config(cfg, logger=_LOG, secret_keys=("storage_options",))

    from pipelines.inference.run import PreflightError, load_input, preflight, run_inference
    from pipelines.inference.model_loader import ModelLoadError
    from pipelines.io.output_lock import OutputLockedError
    from pipelines.inference.output_probe import missing_folders, remove_new_folders
    from pipelines.inference.planning import ManifestPlanError, check_manifest

    try:
        new_folders = missing_folders(cfg.out, cfg.storage_options)  # removed again if the run is refused
    except Exception:  # noqa: BLE001 - preflight reports an unusable out
        new_folders = []
    try:
        # Before ray.init: a bad checkpoint, output or input costs no cluster time. A dataset's meta and
        # annotation files are parsed here, once; bad records become error rows, not a refusal. A manifest's
        # records are checked in the tasks that read it (their bad rows become error rows too).
        model_config = preflight(cfg)
        loaded_input = load_input(cfg) if cfg.manifest is None else None
        if cfg.manifest is not None:  # a manifest streams into the pipeline; here only its files and schema
            try:
                check_manifest(cfg.manifest, storage_options=cfg.storage_options)
            except ManifestPlanError as exc:
                raise PreflightError([str(exc)]) from exc
    except PreflightError as exc:
        remove_new_folders(new_folders)
        print(f"jobs.infer: {exc}", file=sys.stderr)
        return EXIT_USAGE
    init_ray()
    try:
        summary = run_inference(cfg, log=_LOG.info, model_config=model_config, loaded_input=loaded_input)
    except PreflightError as exc:  # e.g. a compute config the cluster cannot schedule: nothing was written
        remove_new_folders(new_folders)
        print(f"jobs.infer: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OutputLockedError as exc:
        print(f"jobs.infer: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except Exception as exc:  # noqa: BLE001 - e.g. the actors could not load the checkpoint (Ray wraps it)
        _LOG.exception("the run failed")
        kind = "the model could not be loaded" if ModelLoadError.__name__ in str(exc) else "the run failed"
        print(f"jobs.infer: {kind}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)}; "
              f"nothing after the last committed batch was written (rerun to resume)", file=sys.stderr)
        return EXIT_FAILED
    if not summary.ok:
        print(
            f"jobs.infer: finished with {summary.errors_rows} error row(s) and {summary.write_failures} failed "
            f"write(s); see {cfg.out.rstrip('/')}/errors/",
            file=sys.stderr,
        )
        return EXIT_ERRORS
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
