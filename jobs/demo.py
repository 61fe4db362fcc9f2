"""The end-to-end demo: synthetic ReVOS-layout videos -> ``infer`` -> ``report``, on built-in defaults.

Writes a small synthetic dataset (moving shapes with known masks, referring, reasoning and
no-target expressions) under ``--out``, segments it with the ``tiny`` model through the Ray Data
pipeline, scores it, and prints the paper-style table (referring / reasoning / overall J, F, J&F).

The model is the committed tiny checkpoint (``checkpoints/tiny-synthetic``) when it exists, else a
random initialisation, which the summary says plainly: random weights give random masks.

Run::

    python -m jobs.demo                                   # everything under ./out/demo
    ray job submit --working-dir . -- python -m jobs.demo --out /tmp/vrshq-demo
"""
from __future__ import annotations

import argparse
import logging
import pathlib
import sys
from collections.abc import Sequence

from jobs._cli import setup_logging

__all__ = ["DEFAULT_CHECKPOINT", "main"]

#: The tiny model trained on synthetic videos (issue 6), committed with the code.
DEFAULT_CHECKPOINT = pathlib.Path(__file__).resolve().parents[1] / "checkpoints" / "tiny-synthetic"

_LOG = logging.getLogger("jobs.demo")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out/demo", help="folder for data, run and report (default: out/demo)")
    parser.add_argument("--videos", type=int, default=6, help="synthetic videos (default: 6)")
    parser.add_argument("--frames", type=int, default=16, help="frames per video (default: 16)")
    parser.add_argument("--size", default="128x160", help="frame HxW (default: 128x160)")
    parser.add_argument("--seed", type=int, default=2025, help="seed of the synthetic data (default: 2025)")
    parser.add_argument("--checkpoint", default=None,
                        help=f"model checkpoint (default: {DEFAULT_CHECKPOINT.name} if present, else random init)")
    args = parser.parse_args(argv)
    try:
        height, width = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must look like 128x160, got {args.size!r}")
    if min(args.videos, args.frames, height, width) < 1:
        parser.error("--videos, --frames and --size must be positive")
    args.height, args.width = height, width
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Generate data, run ``jobs.infer`` and ``jobs.report``; return infer's exit status (0 = clean)."""
    setup_logging()
    args = _parse(argv)
    from jobs import infer, report
    from vrshq.data import write_synthetic_revos

    out = pathlib.Path(args.out).resolve()
    data, run, report_dir = out / "data", out / "run", out / "report"
    if not (data / "mask_dict.json").exists():
        info = write_synthetic_revos(str(data), num_videos=args.videos, num_frames=args.frames,
                                     height=args.height, width=args.width, seed=args.seed)
        _LOG.info("wrote %d synthetic videos to %s", len(info.video_ids), data)
    checkpoint = args.checkpoint or (str(DEFAULT_CHECKPOINT) if DEFAULT_CHECKPOINT.exists() else None)
    model_args = ["--checkpoint", checkpoint] if checkpoint else ["--seed", "0"]
    status = infer.main(["--dataset.format", "revos", "--dataset.root", str(data), "--dataset.split", "valid",
                         "--out", str(run), "--preset", "tiny", *model_args])
    if status not in (infer.EXIT_OK, infer.EXIT_ERRORS):
        return status
    report_status = report.main(["--scores", str(run), "--out", str(report_dir), "--overwrite",
                                 "--dataset.root", str(data), "--masks", str(run)])
    # jobs.report has printed the paper table; say what produced it and where everything is.
    model = f"checkpoint {checkpoint}" if checkpoint else "tiny preset with RANDOM weights (no checkpoint): expect a low J&F"
    print(f"\nmodel: {model}\noutputs: {run} (masks/, scores/, errors/, run.json)\n"
          f"report: {report_dir / 'report.md'} (and report.html, plots)")
    return status or report_status


if __name__ == "__main__":
    sys.exit(main())
