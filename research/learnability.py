"""Learnability run: train a small VRS-HQ from scratch on synthetic videos and score held-out J&F.

One command, one seed, no Ray (a single process on one device)::

    python -m research.learnability --device cuda --steps 3000 --seed 0 --out /tmp/learn
    python -m research.learnability --device cuda --steps 6000 --seed 0 --out /tmp/learn2 --resume /tmp/learn/checkpoint

The model is ``research.presets.learnability_model_config`` (the tiny classes at a size whose
bf16 checkpoint is < 20 MB), trained with the same code as ``jobs.train``: clip sampling of
``pipelines.training.clip_sampling`` (8-12 frames in uniform bins, up to 3 expressions, union masks),
``VrshqModel.forward`` (CE + BCE + DICE + object presence on the 3-frame window), AdamW with
per-group learning rates (SAM2 1e-4, text path 1e-3, learnability.md), 100 warm-up steps, linear
decay, clipping 1.0, bf16 autocast on CUDA; half of the samples are image samples (one frame, referring
expressions, ``--image-ratio``; the method mixes image datasets in). From-scratch aids that are not
the method (never in ``jobs.train``), off by default:

* ``--expression-word-weight W`` adds ``W * research.aids.expression_word_loss``: half of the
  TAK' dimensions mirror the expression's bag of words (only the input text, no label). Why: a
  random-init LLM attends almost uniformly over the prompt, so its TAK hardly depends on the
  expression and SAM2 settles on "segment every shape" (held-out IoU between the masks of two
  expressions of a video 0.99 against 0.27 for the ground truth). With W=1 that IoU falls to
  0.48-0.54 within ~500 steps (H200): the masks follow the text.
* ``--tak-separation-weight W`` adds ``W * research.aids.tak_separation_loss`` (TAKs of
  expressions naming different objects are pushed apart; uses the masks).
* ``--seg-head-init-gain G`` starts the TAK token at G times its init norm
  (``research.aids.scale_seg_head_init``).

Stage 0 (``--track.steps``, default 2000; from random init only): SAM2 alone learns to track from
ground-truth first-frame masks (``research.track_pretrain``), the video training that Meta's SA-V gives
the real SAM2 before VRS-HQ fine-tunes it. Its result (``track_pretrain/``) is resumed or loaded when the
same command runs again on the same ``--out``. After it SAM2 trains only its mask decoder, the method's
trainable set (``--sam2-trainable``). Why: trained only through VRS-HQ's 3-frame windows, the memory path
tracked a *ground-truth* keyframe mask at J 0.65; stage 0 alone brings that to 0.86 (H200, 2,000 steps).
``--track.attribute-weight`` adds a per-cell attribute loss on SAM2's image embedding (a from-scratch aid, off by
default); the committed checkpoint's command sets it to 1, which lets the decoder find by shape.

Stage V (``--vision.steps``, default 0; from random init only): the random vision tower learns what a pretrained
CLIP knows, per patch where it is and what covers it (``research.vision_pretrain``), and is then frozen as the
method freezes CLIP. Why: the cluster means of a random tower's patches keep almost nothing of where an object
is (linear-probe R^2 of the cluster centroid 0.06), so the LLM cannot reason over motion; 600 steps give 0.86
(40 s on an H200). Measured so far it did not help: 1,112 stage-1 steps on it reasoned no better and referred
worse (docs/research/learnability.md, "What limits reasoning"), hence off by default. Its result (``vision_pretrain/``)
is loaded when the same command runs again.

Stage G (``--grounding.steps``, default 0; from random init only, after stage V): the text path (LLM, visual
projector, seg head) learns without SAM2 to make TAK' name the expression's targets among the video's objects
(``research.grounding_pretrain``), what MLLM pretraining gives the real LLM. With ``--preset learn-256-pos`` it
grounds every held-out referring and group expression in 500 steps of 64 clips, but the motion kinds not in 1,500.
Stage 1 after it scored J&F 0.62 against 0.60 while SAM2's encoder hardly told shapes apart; after a stage 0 with
the attribute aid (``--track.attribute-weight``) it scores 0.68 against 0.64 without stage G
(docs/research/learnability.md, "The attribute aid and what now limits"). ``--freeze-llm`` keeps its LLM through stage
1. Its result (``grounding_pretrain/``) is loaded when the same command runs again.

Training videos are generated on the fly by DataLoader workers (never repeated); held-out videos come from a separate seed stream and are
scored through ``VrshqModel.segment_video`` (the inference path) with ``vrshq.metrics``.

Outputs under ``--out``: ``model/`` (full bf16 checkpoint that ``jobs.infer --checkpoint`` loads),
``checkpoint/`` (training checkpoint: float32 trainable weights, optimiser, scheduler, step, data
position; ``--resume`` continues from it), ``log.csv`` (per-step losses and throughput),
``heldout.json`` (J, F, J&F per evaluation), ``curve.png``. ``--max-minutes`` stops training in
time to evaluate and save (the step reached is recorded; ``--resume`` continues the schedule); in stage 0 or
stage G it saves the stage, and the same command again continues it. A run stopped early exits with status 75
(``EXIT_UNFINISHED``), a complete one with 0.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence

from jobs._cli import ConfigError, log_config, parse_job_config, setup_logging
from jobs.demo import TASK_FILE  # written into every exported model/: the task it learnt (jobs.demo reads it)
from research.config import LearnabilityConfig

__all__ = ["EXIT_UNFINISHED", "TASK_FILE", "heldout_videos", "main", "synthetic_clip_stream",
           "write_task_file"]

_LOG = logging.getLogger("research.learnability")
_TRAIN_STREAM, _HELDOUT_STREAM = 1, 2  # separate seed streams: held-out videos are never trained on


EXIT_UNFINISHED = 75
"""Exit status of a run that ``--max-minutes`` (or ``--stop-at-step``) ended early, saved: the same command again
continues it. sysexits' EX_TEMPFAIL, so a script or scheduler can tell "run me again" from done (0) and from a
failure; an exported ``model/`` may already exist then (stage 1 exports at the stop), so its presence is no sign."""


def synthetic_clip_stream(
    *, seed: int, start_sample: int, num_frames: int, size: int, sampling, stride: int = 1, offset: int = 0,
    focus_kinds: Sequence[str] = (), focus_share: float = 0.0,
) -> Iterator:
    """Clip samples ``start_sample + offset, + stride, ...`` of the training stream: sample ``s`` is
    drawn from synthetic video ``s`` (``default_rng([seed, 1, s])``), so the stream never repeats
    and a resumed run continues where it stopped. A ``focus_share`` of the samples keep only the
    expressions of ``focus_kinds`` (``pipelines.training.clip_sampling.focused_video``)."""
    import numpy as np

    from pipelines.training.clip_sampling import focused_video, sample_synthetic_clip
    from vrshq.data import generate_synthetic_video

    sample_id = start_sample + offset
    while True:
        video = generate_synthetic_video(
            np.random.default_rng([seed, _TRAIN_STREAM, sample_id]), num_frames=num_frames, height=size, width=size
        )
        video = focused_video(video, kinds=focus_kinds, share=focus_share, seed=seed, stream=_TRAIN_STREAM,
                              sample_id=sample_id)
        clip = sample_synthetic_clip(video, sample_id=sample_id, seed=seed, sampling=sampling)
        if clip is not None:
            yield clip
        sample_id += stride


def heldout_videos(*, seed: int, count: int, num_frames: int, size: int, expression_types: Sequence[int] = (0, 1)):
    """The held-out set: ``count`` synthetic videos of the held-out stream, scored expression types only."""
    import numpy as np

    from pipelines.training.train_loop import EvalVideo
    from vrshq.data import generate_synthetic_video

    out = []
    for i in range(count):
        video = generate_synthetic_video(
            np.random.default_rng([seed, _HELDOUT_STREAM, i]), num_frames=num_frames, height=size, width=size
        )
        exprs = [e for e in video.expressions if e.type_id in expression_types]
        if exprs:
            out.append(EvalVideo(f"heldout/{i:04d}", video.frames, tuple(e.text for e in exprs),
                                 tuple(video.target_masks(e) for e in exprs), tuple(e.type_id for e in exprs)))
    return out


def _loader(cfg: LearnabilityConfig, stream, batch_size: int):
    """Batches of ``batch_size`` samples from DataLoader worker processes; ``stream(stride=, offset=)``
    yields a worker's share of a sample stream."""
    import torch
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    class _Stream(IterableDataset):
        def __iter__(self):
            info = get_worker_info()
            stride, offset = (info.num_workers, info.id) if info is not None else (1, 0)
            return stream(stride=stride, offset=offset)

    return DataLoader(_Stream(), batch_size=batch_size, collate_fn=list, num_workers=cfg.data_workers,
                      persistent_workers=cfg.data_workers > 0, prefetch_factor=4 if cfg.data_workers else None,
                      worker_init_fn=lambda _: torch.set_num_threads(1))


TRACK_DIR = "track_pretrain"
"""Stage 0's folder under ``--out`` (files: ``research.track_pretrain.pretrain_tracking``)."""
VISION_DIR = "vision_pretrain"
"""Stage V's folder under ``--out`` (files: ``research.vision_pretrain.pretrain_vision_tower``)."""
GROUNDING_DIR = "grounding_pretrain"
"""Stage G's folder under ``--out`` (files: ``research.grounding_pretrain.pretrain_grounding``)."""


def _grounding_stage(cfg: LearnabilityConfig, model, *, deadline: float | None) -> bool:
    """Stage G (``research.grounding_pretrain``) in ``--out``/:data:`GROUNDING_DIR`: trained, resumed when an
    earlier run of this ``--out`` stopped in it, or loaded when complete; False when the deadline cut it short
    (saved: rerun the same command to continue it). Held out: the clips that stage G's sampling takes from the
    held-out videos (never trained on)."""
    from pipelines.training.train_config import SamplingConfig
    from research.grounding_pretrain import grounding_sample_stream, heldout_grounding_samples, pretrain_grounding

    sampling = SamplingConfig(image_ratio=0.0, expression_types=cfg.expression_types)
    heldout = heldout_grounding_samples(cfg.grounding.heldout_videos, seed=cfg.seed, stream=_HELDOUT_STREAM,
                                        num_frames=cfg.video_frames, size=cfg.video_size, sampling=sampling)

    def batches_from(first_sample: int, focus_share: float):
        stream = functools.partial(grounding_sample_stream, seed=cfg.seed, start_sample=first_sample,
                                   num_frames=cfg.video_frames, size=cfg.video_size, sampling=sampling,
                                   focus_kinds=cfg.grounding.focus_kinds, focus_share=focus_share)
        return iter(_loader(cfg, stream, cfg.grounding.videos_per_step))

    summary = pretrain_grounding(model, cfg.grounding, batches_from, heldout=heldout,
                                 folder=os.path.join(cfg.out, GROUNDING_DIR), log_every=cfg.log_every,
                                 deadline=deadline)
    if not summary["complete"]:
        _LOG.warning("stage G stopped by max_minutes; rerun the same command to continue it")
    return bool(summary["complete"])


def _track_stage(cfg: LearnabilityConfig, model, heldout, *, deadline: float | None) -> bool:
    """Stage 0 (``research.track_pretrain``) in ``--out``/:data:`TRACK_DIR`: resumed when an earlier
    run of this ``--out`` stopped in it, loaded when it completed. False when the deadline cut it short
    (saved: rerun the same command to continue it)."""
    import numpy as np

    from pipelines.training.train_loop import true_keyframe_tracking_j
    from research.track_pretrain import pretrain_tracking, track_clip_stream

    def evaluate(step: int) -> dict:
        j = float(np.mean(true_keyframe_tracking_j(model, heldout)))
        _LOG.info("tracking step %d: held-out J of tracking from ground-truth keyframes %.4f", step, j)
        return {"j_true_keyframe": j}

    def batches_from(first_sample: int):
        stream = functools.partial(track_clip_stream, seed=cfg.seed, start_sample=first_sample,
                                   window=cfg.track.window, num_frames=cfg.video_frames, size=cfg.video_size,
                                   with_objects=cfg.track.attribute_weight > 0)
        return iter(_loader(cfg, stream, cfg.track.clips_per_step))

    complete = pretrain_tracking(model, cfg.track, batches_from, folder=os.path.join(cfg.out, TRACK_DIR),
                                 on_eval=evaluate, eval_every=cfg.eval_every, log_every=cfg.log_every,
                                 deadline=deadline)
    if not complete:
        _LOG.warning("stage 0 stopped by max_minutes; rerun the same command to continue it")
    return complete


def _plot(out_dir: str, log_rows: list[dict], evals: list[dict]) -> None:
    """``curve.png``: stage 0 (when ``out_dir`` has one: its loss and held-out J of tracking from ground-truth
    keyframes), stage G (when it has one: held-out grounding accuracy in all and per kind), the training losses
    and the held-out scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from research.grounding_pretrain import read_summary as read_grounding_summary
    from research.track_pretrain import LOG_FILE, read_summary

    def smooth(ax, steps, values, label, **kw):
        steps, values = np.asarray(steps), np.asarray(values)
        if len(values) >= 20:
            ax.plot(steps[19:], np.convolve(values, np.ones(20) / 20, mode="valid"), label=label, **kw)
        else:
            ax.plot(steps, values, label=label, **kw)

    track_dir = os.path.join(out_dir, TRACK_DIR)
    track = read_summary(track_dir)
    grounding = read_grounding_summary(os.path.join(out_dir, GROUNDING_DIR))
    grounding_evals = (grounding or {}).get("evaluations") or []
    panels = 2 + bool(track) + bool(grounding_evals)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4))
    if track:
        ax0 = axes[0]
        with open(os.path.join(track_dir, LOG_FILE)) as f:
            rows = list(csv.DictReader(f))
        smooth(ax0, [float(r["track_step"]) for r in rows], [float(r["loss"]) for r in rows], "tracking loss")
        ax0.set_yscale("log")
        ax0.set_xlabel("stage 0 step")
        ax0.set_title("stage 0: SAM2 tracking pretraining")
        twin = ax0.twinx()
        twin.plot([e["step"] for e in track["evaluations"]], [e["j_true_keyframe"] for e in track["evaluations"]],
                  marker="o", color="tab:green", label="held-out J from GT keyframe")
        twin.set_ylim(0, 1)
        ax0.legend(loc="upper left")
        twin.legend(loc="upper right")
    if grounding_evals:
        axg = axes[1 if track else 0]
        gs = [e["step"] for e in grounding_evals]
        kinds = sorted({k for e in grounding_evals for k in e["accuracy"]} - {"all"})
        axg.plot(gs, [e["accuracy"]["all"] for e in grounding_evals], marker="o", color="black", label="all")
        for kind in kinds:
            axg.plot(gs, [e["accuracy"].get(kind, float("nan")) for e in grounding_evals], marker=".",
                     linewidth=0.8, label=kind)
        axg.set_ylim(0, 1.02)
        axg.set_xlabel("stage G step")
        axg.set_title("stage G: held-out exact target sets")
        axg.legend(fontsize=7)
    ax1, ax2 = axes[-2], axes[-1]
    steps = [r["step"] for r in log_rows]
    for key in ("loss", "bce_loss", "dice_loss", "ce_loss", "object_loss", "sep_loss", "word_loss"):
        if not all(key in r for r in log_rows) or not any(r[key] > 0 for r in log_rows):
            continue  # a resumed log of an older run, or an aid that is off
        smooth(ax1, steps, [r[key] for r in log_rows], key)
    ax1.set_yscale("log")
    ax1.set_xlabel("step")
    ax1.set_title("training losses (20-step mean)")
    ax1.legend()
    if evals:
        es = [e["step"] for e in evals]
        for key in ("j", "f", "jf"):
            ax2.plot(es, [e[key] for e in evals], marker="o", label=key.upper().replace("JF", "J&F"))
        if all("j_true_keyframe" in e for e in evals):
            ax2.plot(es, [e["j_true_keyframe"] for e in evals], marker=".", linestyle=":", color="gray",
                     label="J from GT keyframe")
    ax2.axhline(0.85, color="gray", linestyle="--", linewidth=0.8)
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("step")
    ax2.set_title("held-out (inference path)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "curve.png"), dpi=100)
    plt.close(fig)


def run(cfg: LearnabilityConfig) -> dict:
    """Train, evaluate, save; returns the last held-out scores (with ``step``, ``train_seconds`` and ``complete``:
    False when ``--max-minutes`` or ``--stop-at-step`` ended the run before its last stage-1 step)."""
    import torch

    from pipelines.training.clip_sampling import samples_to_batch
    from pipelines.training.train_config import ModelSpec, OptimConfig, SamplingConfig
    from pipelines.training.train_loop import (
        TrainState,
        build_optimizer,
        build_scheduler,
        build_training_model,
        export_model,
        load_train_checkpoint,
        save_train_checkpoint,
        train_step,
        validate,
    )
    from research.aids import AID_METRICS, EMA_NAME, WeightEma, aid_losses, scale_seg_head_init
    from research.presets import model_preset
    from vrshq.model.tks import largest_target_keyframe

    previous = os.path.join(cfg.out, "checkpoint")
    if not cfg.resume and not cfg.init_model and os.path.exists(os.path.join(previous, "train_state.json")):
        # the same command again continues its run, as it continues stage 0 (never a silent restart over it)
        _LOG.info("%s holds this run's training checkpoint: resuming from it", previous)
        cfg = dataclasses.replace(cfg, resume=previous)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    os.makedirs(cfg.out, exist_ok=True)
    spec = ModelSpec(preset=model_preset(cfg.preset), trainable="all", object_weight=cfg.object_weight, seed=cfg.seed,
                     init_checkpoint=cfg.init_model, train_window=cfg.train_window)
    optim = OptimConfig(lr=cfg.lr, sam2_lr=cfg.sam2_lr, text_lr=cfg.text_lr, warmup_steps=cfg.warmup_steps)
    model = build_training_model(spec, device=device)
    model.train_keyframe_rule = largest_target_keyframe if cfg.train_keyframe == "largest_target" else None
    aids = aid_losses(tak_separation_weight=cfg.tak_separation_weight, expression_word_weight=cfg.expression_word_weight)
    if cfg.seg_head_init_gain != 1.0 and not cfg.resume and not cfg.init_model:
        scale_seg_head_init(model, cfg.seg_head_init_gain)  # random init only: loaded weights are kept
    heldout = heldout_videos(seed=cfg.seed, count=cfg.heldout_videos, num_frames=cfg.video_frames, size=cfg.video_size,
                             expression_types=cfg.expression_types)
    run_started = time.perf_counter()
    deadline = run_started + 60 * cfg.max_minutes if cfg.max_minutes else None  # stages 0, G and 1 share it
    # Where SAM2's weights come from. The training checkpoint holds the trainable weights only, so a
    # resumed run reloads the frozen ones from the same source as the run it continues.
    from research.track_pretrain import WEIGHTS_FILE
    from research.vision_pretrain import pretrain_vision_tower
    from research.vision_pretrain import read_summary as read_vision_summary
    from vrshq.model.sam2_model import load_sam2_checkpoint

    stage0_weights = os.path.join(cfg.out, TRACK_DIR, WEIGHTS_FILE)
    pretrained_sam2 = True
    if cfg.sam2_init:
        load_sam2_checkpoint(model.sam2.sam2, cfg.sam2_init)
    elif cfg.resume and os.path.exists(stage0_weights):
        load_sam2_checkpoint(model.sam2.sam2, stage0_weights)
    elif not cfg.resume and not cfg.init_model and cfg.track.steps > 0:
        if not _track_stage(cfg, model, heldout, deadline=deadline):
            return {"step": 0, "track_stage": "incomplete", "complete": False}
    else:
        pretrained_sam2 = False
    vision_dir = os.path.join(cfg.out, VISION_DIR)
    if not cfg.init_model and (cfg.vision.steps > 0 or (cfg.resume and read_vision_summary(vision_dir))):
        # trains it, or loads a complete one (a resumed run: the frozen tower is not in the training checkpoint)
        pretrain_vision_tower(model.vision, cfg.vision, seed=cfg.seed, folder=vision_dir,
                              num_frames=cfg.video_frames, size=cfg.video_size)
    from research.grounding_pretrain import read_summary as read_grounding_summary

    if not cfg.init_model and (cfg.grounding.steps > 0 or (cfg.resume and read_grounding_summary(
            os.path.join(cfg.out, GROUNDING_DIR)))):
        # trains it, or loads the complete one (a resumed run: weights that stage 1 froze are not in its checkpoint)
        if not _grounding_stage(cfg, model, deadline=deadline):
            return {"step": 0, "grounding_stage": "incomplete", "complete": False}
    if cfg.freeze_llm:
        model.mllm.requires_grad_(False)
        model.vision.projector.requires_grad_(False)
    model.sam2.set_trainable(cfg.sam2_trainable or ("mask_decoder" if pretrained_sam2 else "all"))
    model.vision.set_tower_trainable(cfg.vision_trainable)
    optimizer = build_optimizer(model, optim)
    scheduler = build_scheduler(optimizer, warmup_steps=optim.warmup_steps, decay_steps=cfg.steps)
    state = TrainState()
    if cfg.resume:
        state = load_train_checkpoint(cfg.resume, model=model, optimizer=optimizer, scheduler=scheduler)
        _LOG.info("resumed from %s at step %d (next sample %d)", cfg.resume, state.step, state.next_sample_id)
    ema = WeightEma(model, cfg.ema_decay) if cfg.ema_decay else None
    if ema is not None and cfg.resume:
        ema_path = os.path.join(cfg.resume, EMA_NAME)
        if os.path.exists(ema_path):
            ema.load(ema_path)
        else:
            _LOG.warning("%s has no %s: the weight average starts again from the resumed weights", cfg.resume,
                         EMA_NAME)
    scored = ema.swapped_in if ema is not None else contextlib.nullcontext
    n_params = sum(p.numel() for p in model.parameters())
    _LOG.info("model %s: %.2fM parameters on %s", model.cfg.name, n_params / 1e6, device)
    sampling = SamplingConfig(image_ratio=cfg.image_ratio, expression_types=cfg.expression_types)
    log_path = os.path.join(cfg.out, "log.csv")
    log_rows: list[dict] = []
    evals: list[dict] = []
    if cfg.resume:  # keep the curve of the earlier runs
        for name, target in (("log.csv", log_rows), ("heldout.json", evals)):
            src = os.path.join(os.path.dirname(cfg.resume.rstrip("/")), name)
            if os.path.exists(src):
                with open(src) as f:
                    target.extend(
                        [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)] if name.endswith(".csv")
                        else json.load(f)["evaluations"]
                    )

    def evaluate(step: int) -> dict:
        with scored():
            scores = validate(model, heldout, true_keyframe=True)
        scores["step"] = step
        evals.append(scores)
        _LOG.info("step %d held-out: J %.4f F %.4f J&F %.4f (referring %.4f, reasoning %.4f) in %.1fs; IoU between "
                  "the masks of two expressions of a video: predicted %.3f, ground truth %.3f (near 1 vs low: the "
                  "model ignores the expression); keyframe J %.3f, wrong object at the keyframe %.1f%%; J of "
                  "tracking alone from ground-truth keyframes %.3f (the ceiling of perfect grounding)",
                  step, scores["j"], scores["f"], scores["jf"],
                  scores.get("jf_referring", float("nan")), scores.get("jf_reasoning", float("nan")), scores["seconds"],
                  scores["pred_pair_iou"], scores["gt_pair_iou"], scores["keyframe_j"],
                  100 * scores["wrong_keyframe_share"], scores["j_true_keyframe"])
        model.train()
        return scores

    started = time.perf_counter()
    wall_before = state.wall_seconds + (started - run_started)  # stage 0 counts in the run's wall time

    def save(at_step: int, next_sample: int, last: dict) -> TrainState:
        """Checkpoint, model, log, scores and curve of the run so far (after every evaluation)."""
        import shutil

        saved = TrainState(step=at_step, next_sample_id=next_sample,
                           wall_seconds=wall_before + time.perf_counter() - started)
        for name in ("checkpoint.tmp", "model.tmp"):
            if os.path.exists(os.path.join(cfg.out, name)):
                shutil.rmtree(os.path.join(cfg.out, name))
        save_train_checkpoint(os.path.join(cfg.out, "checkpoint.tmp"), model=model, optimizer=optimizer,
                              scheduler=scheduler, state=saved)
        if ema is not None:
            ema.save(os.path.join(cfg.out, "checkpoint.tmp", EMA_NAME))
        with scored():  # the exported model is the one that was scored
            export_model(model, os.path.join(cfg.out, "model.tmp"), dtype=torch.bfloat16)
        write_task_file(os.path.join(cfg.out, "model.tmp"), cfg, step=at_step, scores=last,
                        train_seconds=saved.wall_seconds)
        _replace_folder(os.path.join(cfg.out, "checkpoint.tmp"), os.path.join(cfg.out, "checkpoint"))
        _replace_folder(os.path.join(cfg.out, "model.tmp"), os.path.join(cfg.out, "model"))
        with open(log_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(log_rows[0]))
            writer.writeheader()
            writer.writerows(log_rows)
        summary = {"config": dataclasses.asdict(cfg), "step": at_step, "train_seconds": saved.wall_seconds,
                   "final": last, "evaluations": evals, "parameters": n_params}
        with open(os.path.join(cfg.out, "heldout.json"), "w") as f:
            json.dump(summary, f, indent=2)
        _plot(cfg.out, log_rows, evals)
        model.train()
        return saved

    step, sample_pos = state.step, state.next_sample_id
    stream = functools.partial(synthetic_clip_stream, seed=cfg.seed, start_sample=sample_pos,
                               num_frames=cfg.video_frames, size=cfg.video_size, sampling=sampling,
                               focus_kinds=cfg.focus_kinds, focus_share=cfg.focus_share)
    loader = iter(_loader(cfg, stream, cfg.videos_per_step))
    last_step = cfg.stop_at_step or cfg.steps
    while step < last_step:
        t0 = time.perf_counter()
        clips = next(loader)
        t_data = time.perf_counter() - t0
        metrics = {**dict.fromkeys(AID_METRICS, 0.0),
                   **train_step(model, optimizer, scheduler, [samples_to_batch(clips)],
                                clip_grad_norm=optim.clip_grad_norm, extra_losses=aids)}
        if ema is not None:
            ema.update()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step += 1
        sample_pos = max(sample_pos, max(c.sample_id for c in clips) + 1)
        seconds = time.perf_counter() - t0
        row = {"step": step, **{k: metrics[k] for k in ("loss", "ce_loss", "bce_loss", "dice_loss", "object_loss",
                                                          "sep_loss", "word_loss", "grad_norm", "lr_sam2",
                                                          "lr_text")},
               "seconds": seconds, "data_seconds": t_data, "clips_per_s": len(clips) / seconds}
        log_rows.append(row)
        if step % cfg.log_every == 0 or step == 1:
            _LOG.info("step %d loss %.4f (ce %.3f bce %.3f dice %.3f obj %.3f sep %.3f word %.3f) %.3fs/step "
                      "(data %.3fs)", step, row["loss"], row["ce_loss"], row["bce_loss"], row["dice_loss"],
                      row["object_loss"], row["sep_loss"], row["word_loss"], seconds, t_data)
        if step % cfg.eval_every == 0 and step < last_step:
            save(step, sample_pos, evaluate(step))  # a killed run keeps its last evaluated checkpoint
        if deadline is not None and time.perf_counter() > deadline:
            _LOG.info("max_minutes reached at step %d of %d", step, cfg.steps)
            break
    final = evaluate(step) if not evals or evals[-1]["step"] != step else evals[-1]
    state = save(step, sample_pos, final)
    return {**final, "train_seconds": state.wall_seconds, "complete": step >= cfg.steps}


def write_task_file(model_dir: str, cfg: LearnabilityConfig, *, step: int, scores: dict, train_seconds: float) -> None:
    """Write :data:`TASK_FILE` into ``model_dir``: the synthetic task (frame size, frames, expression types)
    and the held-out scores, so whoever loads the model (``jobs.demo``) can rebuild comparable data."""
    keys = ("j", "f", "jf", "jf_revos", "j_referring", "f_referring", "jf_referring", "j_reasoning", "f_reasoning",
            "jf_reasoning", "keyframe_j", "wrong_keyframe_share", "j_true_keyframe", "num_expressions")
    payload = {
        "task": {"generator": "vrshq.data.generate_synthetic_video", "video_size": cfg.video_size,
                 "video_frames": cfg.video_frames, "expression_types": list(cfg.expression_types)},
        "heldout": {"videos": cfg.heldout_videos, "seed": cfg.seed, "step": step,
                    **{k: scores[k] for k in keys if k in scores}},
        "training": {"steps": step, "train_seconds": train_seconds, "config": dataclasses.asdict(cfg)},
    }
    from research.track_pretrain import read_summary

    stage0 = read_summary(os.path.join(cfg.out, TRACK_DIR))
    if stage0 is not None:
        payload["training"]["stage0"] = {k: stage0[k] for k in ("steps", "seconds", "complete", "config", "evaluations")}
    from research.vision_pretrain import read_summary as read_vision_summary

    stage_v = read_vision_summary(os.path.join(cfg.out, VISION_DIR))
    if stage_v is not None:
        payload["training"]["stage_v"] = stage_v
    from research.grounding_pretrain import read_summary as read_grounding_summary

    stage_g = read_grounding_summary(os.path.join(cfg.out, GROUNDING_DIR))
    if stage_g is not None:
        payload["training"]["stage_g"] = stage_g
    with open(os.path.join(model_dir, TASK_FILE), "w") as f:
        json.dump(payload, f, indent=2)


def _replace_folder(tmp: str, final: str) -> None:
    """Move a freshly written folder over the previous one (a kill leaves the old or the new one whole)."""
    import shutil

    old = final + ".old"
    if os.path.exists(old):
        shutil.rmtree(old)
    if os.path.exists(final):
        os.rename(final, old)
    os.rename(tmp, final)
    if os.path.exists(old):
        shutil.rmtree(old)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run, print the final held-out scores. Exit status 0 when the run is complete,
    :data:`EXIT_UNFINISHED` when it stopped early (saved: the same command again continues it), 2 on a bad
    configuration."""
    setup_logging()
    try:
        cfg = parse_job_config(LearnabilityConfig, argv, module="research.learnability", doc=__doc__)
    except ConfigError as exc:
        print(f"research.learnability: {exc}", file=sys.stderr)
        return 2
    log_config(cfg, logger=_LOG)
    final = run(cfg)
    print(json.dumps({k: final[k] for k in ("step", "j", "f", "jf", "jf_revos", "train_seconds", "complete")
                      if k in final}))
    return 0 if final["complete"] else EXIT_UNFINISHED


if __name__ == "__main__":
    sys.exit(main())
