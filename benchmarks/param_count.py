"""Parameter count of a vrshq preset, built on the meta device (no memory, no weights), by part.

Run:
    .venv/bin/python -m benchmarks.param_count                 # vrshq-7b
    .venv/bin/python -m benchmarks.param_count --preset tiny --out /tmp/params.parquet

Prints one row per part (LLM, CLIP tower, projector, seg head, SAM2, CLIP-336 anchor, other) with the
number of parameters and their bf16 size, and optionally writes the rows as Parquet (with the git sha
and a hash of the config, as every benchmark of this repo does).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from collections.abc import Sequence

import torch

__all__ = ["PARTS", "count_parameters_by_part", "main"]

PARTS: tuple[tuple[str, str], ...] = (
    ("llm", "mllm.llm."),
    ("clip_tower", "vision.vision_tower."),
    ("projector", "vision.projector."),
    ("seg_head", "seg_head."),
    ("sam2", "sam2."),
    ("clip336_anchor", "anchor."),
)
"""(part, parameter-name prefix in VrshqModel); anything else is counted as "other"."""


def count_parameters_by_part(model: torch.nn.Module) -> dict[str, int]:
    """Parameters per part of a ``VrshqModel`` (shared parameters counted once), plus ``"total"``."""
    counts = {name: 0 for name, _ in PARTS} | {"other": 0}
    for name, param in model.named_parameters():  # named_parameters() de-duplicates tied weights
        part = next((p for p, prefix in PARTS if name.startswith(prefix)), "other")
        counts[part] += param.numel()
    counts["total"] = sum(counts.values())
    return counts


def _git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from vrshq.presets import PRESETS

    parser.add_argument("--preset", choices=sorted(PRESETS), default="vrshq-7b")
    parser.add_argument("--out", help="optional Parquet file for the rows")
    args = parser.parse_args(argv)

    from vrshq.builders import build_vrshq
    from vrshq.checkpoint.config_io import config_to_dict

    cfg = PRESETS[args.preset]()
    model = build_vrshq(cfg, device=torch.device("meta"))
    counts = count_parameters_by_part(model)
    config_hash = hashlib.sha256(json.dumps(config_to_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]
    print(f"{'part':<16}{'parameters':>16}{'bf16 GB':>10}")
    for part, n in counts.items():
        print(f"{part:<16}{n:>16,}{n * 2 / 1e9:>10.2f}")
    if args.out:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [{"preset": args.preset, "part": p, "parameters": n, "device": "meta", "git_sha": _git_sha(),
                 "config_hash": config_hash} for p, n in counts.items()]
        pq.write_table(pa.Table.from_pylist(rows), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
