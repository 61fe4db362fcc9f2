"""Scores -> the paper's table, breakdowns, plots and a Markdown + HTML report.

Reads the scores table (and errors, when present) of one (dataset, split) with DuckDB and writes
to ``--out``: ``report.md``, ``report.html``, ``summary.json``, ``per_video.csv``,
``breakdown_<name>.csv``, ``distributions.png``, ``breakdowns.png`` and, when ground truth is
given (``--dataset.*``) and the scores carry TKS keyframes (masks from ``jobs.infer``),
``keyframes.csv`` + ``keyframes.png``. ``--overlay video_id:exp_id`` (repeatable; needs
``--masks`` and ``--dataset.*``) adds ``overlays/<n>.png`` grids of frames with the prediction and
the ground truth drawn on them (``--overlay-video``: also ``overlays/<n>.mp4`` of every frame).

Example::

    python -m jobs.report --scores s3://bucket/runs/r1 --out s3://bucket/runs/r1/report \\
        --dataset.root s3://bucket/ReVOS --masks s3://bucket/runs/r1 --overlay 'UVO/all/2E4T5NCywcE:3'

Exit status: 0 done (1 when the scores come with error rows), 2 bad configuration.
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from jobs._cli import ConfigError, log_config, parse_job_config, setup_logging
from pipelines.evaluation.report_run import ReportConfig, build_report

__all__ = ["ReportConfig", "build_report", "main"]

_LOG = logging.getLogger("jobs.report")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (see the module docstring)."""
    from pipelines.evaluation.report import format_summary_table

    setup_logging()
    try:
        cfg = parse_job_config(ReportConfig, argv, module="jobs.report", doc=__doc__)
        log_config(cfg)
        result = build_report(cfg)
    except ConfigError as exc:
        _LOG.error("%s", exc)
        return 2
    print(f"report for {result['dataset']}/{result['split']} written to {cfg.out} "
          f"({result['expressions']} expressions, {result['errors']} errors)\n"
          + format_summary_table(result["summary"]), flush=True)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
