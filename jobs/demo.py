"""The end-to-end demo: synthetic ReVOS-layout videos -> ``infer`` -> ``report``, on built-in defaults.

Writes a small synthetic dataset (moving shapes with known masks, referring, reasoning and
no-target expressions) under ``--out``, segments it with the ``tiny`` model through the Ray Data
pipeline, scores it, and prints the paper-style table (referring / reasoning / overall J, F, J&F).

The model is the committed tiny checkpoint (``checkpoints/tiny-synthetic``) when it exists, else a
random initialisation, which the summary says plainly: random weights give random masks.

A checkpoint trained by ``research.learnability`` carries ``learnability.json``, the task it learnt (frame
size, frames per video, expression types) and its held-out scores. The demo's synthetic data follows
that task unless ``--size``/``--frames``/``--expression-types`` say otherwise, so the printed J&F is
comparable with the held-out J&F the checkpoint was published with (printed beside it).

Run::

    python -m jobs.demo                                   # everything under ./out/demo
    ray job submit --working-dir . -- python -m jobs.demo --out /tmp/vrshq-demo
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pathlib
import shutil
import sys
from collections.abc import Sequence

from jobs._cli import ConfigError, init_ray, log_config, parse_job_config, setup_logging
from vrshq.validation import is_int, Validated, required_problems

__all__ = ["DEFAULT_CHECKPOINT", "TASK_FILE", "DemoConfig", "DemoData", "demo_data", "local_compute_args", "main",
           "read_task_file"]

TASK_FILE = "learnability.json"
"""In a checkpoint folder trained on synthetic videos: the task it learnt and its held-out scores (written by
``research.learnability``)."""

#: The tiny model trained on synthetic videos, committed with the code.
DEFAULT_CHECKPOINT = pathlib.Path(__file__).resolve().parents[1] / "checkpoints" / "tiny-synthetic"

_LOG = logging.getLogger("jobs.demo")


@dataclasses.dataclass(frozen=True)
class DemoData:
    """The synthetic dataset of a demo run (recorded beside it, so that other settings regenerate it)."""

    videos: int
    frames: int
    height: int
    width: int
    seed: int
    expression_types: tuple[int, ...]

    def matches(self, folder: pathlib.Path) -> bool:
        """Whether ``folder`` holds exactly this dataset (its :data:`DATA_MARKER` says so)."""
        marker = folder / DATA_MARKER
        try:
            return json.loads(marker.read_text()) == json.loads(json.dumps(dataclasses.asdict(self)))
        except (OSError, ValueError):
            return False

    def write_marker(self, folder: pathlib.Path) -> None:
        (folder / DATA_MARKER).write_text(json.dumps(dataclasses.asdict(self)))


DATA_MARKER = "demo_data.json"
"""In the demo's data folder: the :class:`DemoData` it was written with (other settings regenerate it)."""


def read_task_file(checkpoint: str | None) -> dict:
    """A checkpoint's :data:`TASK_FILE` ({} when there is none: a checkpoint of another origin)."""
    if not checkpoint:
        return {}
    from pipelines.io.storage import filesystem_for

    fs, path = filesystem_for(checkpoint)
    task_path = path.rstrip("/") + "/" + TASK_FILE
    if not fs.exists(task_path):
        return {}
    try:
        with fs.open(task_path, "r") as f:
            payload = json.load(f)
        task = payload["task"]
        payload["task"] = {"frames": int(task["video_frames"]),
                           "size": (int(task["video_size"]), int(task["video_size"])),
                           "expression_types": tuple(int(t) for t in task["expression_types"])}
        return payload
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"jobs.demo: {task_path} is unreadable ({type(exc).__name__}: {exc}); fix or remove it") from exc


def _published_scores(payload: dict) -> str:
    """The held-out scores lines of a task file, else ``""``. The table that ``jobs.report`` prints has a row
    per expression type and an ``overall`` row that is their mean (ReVOS's convention); the published
    per-type J&F and that mean come first so the two compare like with like, then the mean over expressions."""
    heldout = payload.get("heldout", {})
    if not all(k in heldout for k in ("j", "f", "jf")):
        return ""
    lines = f"\n  published held-out scores of this checkpoint ({heldout.get('videos', '?')} unseen videos):"
    if all(k in heldout for k in ("jf_referring", "jf_reasoning")):
        overall = heldout.get("jf_revos", (heldout["jf_referring"] + heldout["jf_reasoning"]) / 2)
        lines += (f"\n    J&F referring {100 * heldout['jf_referring']:.1f}  reasoning "
                  f"{100 * heldout['jf_reasoning']:.1f}  overall {100 * overall:.1f} (the mean of the two, as above)")
    return lines + (f"\n    per expression: J {heldout['j']:.3f}  F {heldout['f']:.3f}  J&F {heldout['jf']:.3f}")


def demo_data(args: argparse.Namespace, task: dict) -> DemoData:
    """Flags first, then the checkpoint's task (``read_task_file(...)["task"]``), then the defaults of a
    random-weights demo."""
    height, width = args.size if args.size else task.get("size", (128, 160))
    return DemoData(videos=args.videos, frames=args.frames or task.get("frames", 16), height=height, width=width,
                    seed=args.seed, expression_types=args.expression_types or task.get("expression_types", (0, 1, 2)))


def local_compute_args(videos: int, *, cpus: int | None = None) -> list[str]:
    """``jobs.infer`` compute flags that use every core of the machine for a demo on its own local Ray.

    One model actor per core (at most one per video), each on one torch thread: the tiny model's CPU
    kernels are latency-bound, so two processes on two cores segment two videos in the time of one, while
    two threads in one process gain nothing (and lose much when other work shares the cores). The actors
    leave half a CPU to the frame readers and the writer. A demo submitted to a cluster (``RAY_ADDRESS``
    set) keeps the job's defaults.
    """
    if os.environ.get("RAY_ADDRESS"):
        return []
    if cpus is None:
        import ray

        # a cluster this process already joined has its own size; a local one gets every core
        cpus = int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else os.cpu_count() or 1
    actors = max(1, min(cpus, videos))
    if actors == 1:
        return []
    per_actor = (cpus - 0.5) / actors
    return ["--compute.num-actors", str(actors), "--compute.num-cpus-per-actor", f"{per_actor:g}",
            "--compute.read-num-cpus", "0.25", "--compute.writer-num-cpus", "0.25"]


def _frame_size(text: str | None) -> tuple[int, int] | None:
    """``"128x160"`` -> ``(128, 160)``; None stays None. Raises ValueError on any other text."""
    if text is None:
        return None
    size = tuple(int(v) for v in str(text).lower().split("x"))
    if len(size) != 2:
        raise ValueError(text)
    return size  # type: ignore[return-value]


def _type_ids(text: str | None) -> tuple[int, ...] | None:
    """``"1,0"`` -> ``(0, 1)``; None stays None. Raises ValueError on any other text."""
    if text is None:
        return None
    return tuple(sorted({int(t) for t in str(text).split(",")}))


@dataclasses.dataclass(frozen=True)
class DemoConfig(Validated):
    """The demo's settings (``python -m jobs.demo --help``); every default is a runnable demo."""

    out: str = dataclasses.field(default="out/demo", metadata={"help": "folder for data, run and report"})
    videos: int = dataclasses.field(default=16, metadata={"help": "synthetic videos"})
    frames: int | None = dataclasses.field(
        default=None, metadata={"help": f"frames per video (null: the checkpoint's {TASK_FILE}, else 16)"})
    size: str | None = dataclasses.field(
        default=None, metadata={"help": f"frame HxW, e.g. 128x160 (null: the checkpoint's {TASK_FILE}, else 128x160)"})
    expression_types: str | None = dataclasses.field(
        default=None, metadata={"help": "comma-separated type ids: 0 referring, 1 reasoning, 2 no-target "
                                        f"(null: the checkpoint's {TASK_FILE}, else 0,1,2)"})
    seed: int = dataclasses.field(default=2025, metadata={"help": "seed of the synthetic data"})
    checkpoint: str | None = dataclasses.field(
        default=None,
        metadata={"help": f"model checkpoint (null: {DEFAULT_CHECKPOINT.name} if present, else random init)"})

    def problems(self) -> list[str]:
        """Every problem of these fields (``vrshq.validation``)."""
        problems = required_problems(self, out="the demo folder")
        if not is_int(self.videos) or self.videos < 1:
            problems.append(f"videos={self.videos!r}: must be positive")
        if self.frames is not None and (not is_int(self.frames) or self.frames < 1):
            problems.append(f"frames={self.frames!r}: must be positive")
        try:
            size = _frame_size(self.size)
        except ValueError:
            problems.append(f"size={self.size!r}: must look like 128x160")
        else:
            if size is not None and min(size) < 1:
                problems.append(f"size={self.size!r}: must be positive")
        try:
            types = _type_ids(self.expression_types)
        except ValueError:
            problems.append(f"expression_types={self.expression_types!r}: must look like 0,1")
        else:
            if types is not None and not set(types) <= {0, 1, 2}:
                problems.append(f"expression_types={self.expression_types!r}: must be among 0, 1, 2")
        return problems


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The shared job parser (``jobs._cli``) on :class:`DemoConfig`; sizes and type ids come back parsed.
    A bad command line exits with status 2, listing every problem."""
    try:
        cfg = parse_job_config(DemoConfig, argv, module="jobs.demo", doc=__doc__)
    except ConfigError as exc:
        print(f"jobs.demo: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    log_config(cfg, logger=_LOG)
    return argparse.Namespace(**{**dataclasses.asdict(cfg), "size": _frame_size(cfg.size),
                                 "expression_types": _type_ids(cfg.expression_types)})


def main(argv: Sequence[str] | None = None) -> int:
    """Generate data, run ``jobs.infer`` and ``jobs.report``; return infer's exit status (0 = clean)."""
    setup_logging()
    args = _parse(argv)
    from jobs import infer, report
    from vrshq.data import SyntheticSceneConfig, write_synthetic_revos

    checkpoint = args.checkpoint or (str(DEFAULT_CHECKPOINT) if DEFAULT_CHECKPOINT.exists() else None)
    task_file = read_task_file(checkpoint)
    spec = demo_data(args, task_file.get("task", {}))
    out = pathlib.Path(args.out).resolve()
    data, run, report_dir = out / "data", out / "run", out / "report"
    if not spec.matches(data):
        if data.exists():
            _LOG.info("the demo data in %s has other settings: writing it anew", data)
            shutil.rmtree(data)
        info = write_synthetic_revos(str(data), num_videos=spec.videos, num_frames=spec.frames, height=spec.height,
                                     width=spec.width, seed=spec.seed,
                                     config=SyntheticSceneConfig(expression_types=spec.expression_types))
        spec.write_marker(data)
        _LOG.info("wrote %d synthetic videos to %s", len(info.video_ids), data)
    if run.exists():
        # infer resumes by (video, expression) keys, which repeat across demo datasets and models: start clean.
        _LOG.info("removing the previous demo run %s", run)
        shutil.rmtree(run)
    model_args = ["--checkpoint", checkpoint] if checkpoint else ["--seed", "0"]
    if not os.environ.get("RAY_ADDRESS"):
        # The local cluster infer would start, without the dashboard: nobody watches a one-minute demo there,
        # and its processes take CPU from the model actors on a small machine. (A cluster this process
        # already joined, or one given by RAY_ADDRESS, is used as it is.)
        init_ray(include_dashboard=False)
    status = infer.main(["--dataset.format", "revos", "--dataset.root", str(data), "--dataset.split", "valid",
                         "--out", str(run), "--preset", "tiny", *model_args, *local_compute_args(spec.videos)])
    if status not in (infer.EXIT_OK, infer.EXIT_ERRORS):
        return status
    report_status = report.main(["--scores", str(run), "--out", str(report_dir), "--overwrite",
                                 "--dataset.root", str(data), "--masks", str(run)])
    # jobs.report has printed the paper table; say what produced it and where everything is.
    model = f"checkpoint {checkpoint}" if checkpoint else "tiny preset with RANDOM weights (no checkpoint): expect a low J&F"
    published = _published_scores(task_file)
    print(f"\nmodel: {model}{published}\ndata: {data} ({spec.videos} videos, {spec.frames} frames of "
          f"{spec.height}x{spec.width}, expression types {','.join(map(str, spec.expression_types))})\n"
          f"outputs: {run} (masks/, scores/, errors/, run.json)\n"
          f"report: {report_dir / 'report.md'} (and report.html, plots)")
    return status or report_status


if __name__ == "__main__":
    sys.exit(main())
