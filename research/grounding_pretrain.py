"""Grounding pretraining of the text path on synthetic videos: what MLLM pretraining gives the real LLM.

Why: VRS-HQ fine-tunes an MLLM that already answers questions about videos (Chat-UniVi's pretraining), so
its [TAK] already says which object an expression means; SAM2's mask loss only has to teach it to say so in
SAM2's prompt space. A random-init tiny LLM has to learn grounding through that mask loss alone, a weak and
noisy signal: in 1,500-2,400 stage-1 steps a quarter of the referring expressions and most reasoning ones
("the fastest", "hides behind") still pick the wrong object (docs/research/learnability.md, "What limits reasoning").

Measured (docs/research/learnability.md, "Grounding pretraining and what the decoder cannot find"): with positions in
the visual tokens (``learn-256-pos``) this stage grounds every held-out referring and group expression in 500 steps, but
not the motion kinds in 1,500. Stage 1 after it scored no better while SAM2's decoder could not find by shape what its
image features hardly encoded (TAK' already named ~94% of the referring targets after plain stage 1 too). With the
stage-0 attribute aid that gives those features shape, stage 1 after this stage scores J&F 0.68 against 0.64
without it (docs/research/learnability.md, "The attribute aid and what now limits"); the committed checkpoint's command
runs it. Off by default, as every from-scratch aid.

This stage trains the LLM, the visual projector and the seg head, without SAM2, so that TAK' (TDA's fusion of
the [SEG] tokens into [TAK], exactly as training computes it: :meth:`VrshqModel.text_path`) names the target:
a linear head on TAK', thrown away afterwards, scores each of the 24 (size, colour, shape) triples of the
synthetic grammar, and a sigmoid BCE over the triples of the objects present in the clip's video asks it to
say which are the expression's targets (several for "the two red shapes" or "the moving shapes"); with
``target_loss="softmax"`` a cross-entropy over those triples asks which of them are. In a probe of the LLM's size
the softmax learnt the motion kinds sooner (docs/research/learnability.md, "What holds motion back"); in this stage it
learnt referring expressions ~2x later than the BCE and the motion kinds no better (docs/research/learnability.md,
"Finer patches"), so the BCE stays. The motion kinds were learnt at a constant rate (``lr_schedule="constant"``) from
clips of them alone, after ~1,450 steps of 256 clips; a focus phase (``focus_steps``, then ``focus_share_after``) brings
the other kinds back (docs/research/learnability.md, "Stage G learns motion"). The method's CE on the answer text stays
on. Without SAM2 a step is cheap, so it runs many more videos than stage 1 can.

Held-out accuracy: an expression counts as grounded when the set of present objects with a positive score
is exactly its target set; reported in all and per kind (``referring``, ``group``, ``fastest`` ...).

Folder (``folder``): :data:`WEIGHTS_FILE` (the text path's weights, float32: ``mllm.*``, ``seg_head.*``,
``vision.projector.*``), :data:`STATE_FILE` (optimiser, schedule, the throw-away head, step and data position) and
:data:`SUMMARY_FILE` (config, steps, seconds, the evaluations, ``complete``), all written at every evaluation and
when a deadline stops the stage. A complete folder is loaded, not trained again. An incomplete one of the same
settings is resumed (with ``lr_schedule="constant"``, also one of fewer steps, complete or not): teaching the motion
kinds takes ~10^6 questions (docs/research/learnability.md, "What motion needs"), a stage G of hours that must survive a
stopped machine, as stages 0 and 1 do, and may need more steps than first planned.
"""
from __future__ import annotations

import collections
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.training.clip_sampling import ClipSample, focused_video, sample_synthetic_clip, samples_to_batch
from pipelines.training.train_config import SamplingConfig
from pipelines.training.train_loop import build_scheduler
from research.aux_heads import throwaway_linear_head
from research.config import GroundingPretrainConfig
from research.stage_files import read_json_if_exists, same_settings
from vrshq.data.synthetic import COLOURS, SHAPES, SIZES, SyntheticVideo, generate_synthetic_video
from vrshq.storage import write_json

__all__ = [
    "GROUNDING_STREAM",
    "STATE_FILE",
    "SUMMARY_FILE",
    "TARGET_TRIPLES",
    "WEIGHTS_FILE",
    "GroundingSample",
    "TEXT_PATH_PREFIXES",
    "focus_share_at",
    "grounding_sample",
    "grounding_scores",
    "grounding_sample_stream",
    "heldout_grounding_samples",
    "load_grounding_head",
    "load_text_path",
    "pretrain_grounding",
    "read_summary",
]

_LOG = logging.getLogger("research.grounding_pretrain")

WEIGHTS_FILE = "text_path.safetensors"
SUMMARY_FILE = "grounding.json"
STATE_FILE = "state.pt"
GROUNDING_STREAM = 6
"""Seed stream of this stage's training videos (stage 1 uses 1, held-out 2, stage 0 3, stage V 4 and 5)."""
TARGET_TRIPLES: tuple[tuple[str, str, str], ...] = tuple(itertools.product(SIZES, COLOURS, SHAPES))
"""The 24 (size, colour, shape) triples; a synthetic video never has two objects of one triple."""
TEXT_PATH_PREFIXES: tuple[str, ...] = ("mllm.", "seg_head.", "vision.projector.")
"""Parameter-name prefixes of what this stage trains and saves."""


@dataclass(frozen=True)
class GroundingSample:
    """A training clip and, per expression, its targets over :data:`TARGET_TRIPLES`.

    Attributes:
        clip: the clip as stage 1 samples it (frames, prompts, masks).
        targets: float32 ``(E, 24)``: 1 for a target, 0 for another object of the video, -1 for triples that no
            object of the video has (not scored).
        kinds: the E expression kinds (``referring``, ``group``, ``fastest`` ...).
    """

    clip: ClipSample
    targets: np.ndarray
    kinds: tuple[str, ...]


def grounding_sample(
    video: SyntheticVideo, *, sample_id: int, seed: int, sampling: SamplingConfig
) -> GroundingSample | None:
    """The clip that stage 1 would sample from ``video`` (:func:`sample_synthetic_clip`) with its targets;
    None when that gives no clip. No-target expressions have an all-zero row (no object is a target)."""
    clip = sample_synthetic_clip(video, sample_id=sample_id, seed=seed, sampling=sampling)
    if clip is None:
        return None
    by_text = {e.text.strip(): e for e in video.expressions}
    present = {(o.size, o.colour, o.shape): o.obj_id for o in video.objects}
    targets = np.full((len(clip.expressions), len(TARGET_TRIPLES)), -1.0, dtype=np.float32)
    kinds = []
    for row, text in enumerate(clip.expressions):
        if text not in by_text:
            raise KeyError(f"sample {sample_id}: sampled expression {text!r} is not one of the video's expressions")
        expression = by_text[text]
        for column, triple in enumerate(TARGET_TRIPLES):
            if triple in present:
                targets[row, column] = float(present[triple] in expression.obj_ids)
        kinds.append(expression.kind)
    return GroundingSample(clip, targets, tuple(kinds))


def grounding_sample_stream(
    *, seed: int, start_sample: int, num_frames: int, size: int, sampling: SamplingConfig, stride: int = 1,
    offset: int = 0, stream: int = GROUNDING_STREAM, focus_kinds: Sequence[str] = (), focus_share: float = 0.0,
) -> Iterator[GroundingSample]:
    """Samples ``start_sample + offset, + stride, ...`` of synthetic video stream ``stream``
    (``default_rng([seed, stream, s])``); never repeats, and a DataLoader worker takes every ``stride``-th.

    A ``focus_share`` of the samples (drawn per sample id) keep only the expressions of ``focus_kinds``; a video
    without one gives no such sample. Why: a small LLM learns "which shape never moves?" from true object tracks
    only after ~10^6 questions (docs/research/learnability.md, "What motion needs"); the whole task's mix gives ~60k in
    1,500 steps.
    """
    sample_id = start_sample + offset
    while True:
        video = generate_synthetic_video(np.random.default_rng([seed, stream, sample_id]), num_frames=num_frames,
                                         height=size, width=size)
        video = focused_video(video, kinds=focus_kinds, share=focus_share, seed=seed, stream=stream,
                              sample_id=sample_id)
        sample = grounding_sample(video, sample_id=sample_id, seed=seed, sampling=sampling)
        if sample is not None:
            yield sample
        sample_id += stride


def heldout_grounding_samples(
    count: int, *, seed: int, stream: int, num_frames: int, size: int, sampling: SamplingConfig
) -> list[GroundingSample]:
    """The samples of synthetic videos ``0 .. count - 1`` of seed stream ``stream`` (a held-out one: the caller
    owns the stream ids); videos without a clip are left out."""
    samples = []
    for i in range(count):
        video = generate_synthetic_video(np.random.default_rng([seed, stream, i]), num_frames=num_frames, height=size,
                                         width=size)
        sample = grounding_sample(video, sample_id=i, seed=seed, sampling=sampling)
        if sample is not None:
            samples.append(sample)
    return samples


def _target_loss(logits: torch.Tensor, targets: torch.Tensor, scored: torch.Tensor, kind: str) -> torch.Tensor:
    """``bce``: a sigmoid BCE per present triple. ``softmax``: a cross-entropy over each expression's present
    triples against its targets, shared equally (expressions without a target are left out)."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits[scored], targets[scored])
    positive = (targets > 0.5) & scored
    rows = positive.any(dim=1)
    if not rows.any():
        return logits.sum() * 0.0
    log_p = logits[rows].masked_fill(~scored[rows], float("-inf")).log_softmax(dim=1)
    wanted = positive[rows].float() / positive[rows].sum(dim=1, keepdim=True)
    return -(wanted * log_p.masked_fill(~scored[rows], 0.0)).sum(dim=1).mean()


def _predicted_sets(logits: torch.Tensor, targets: torch.Tensor, scored: torch.Tensor, kind: str) -> torch.Tensor:
    """Per expression, whether its predicted target set is exact. ``bce``: the present triples of positive score.
    ``softmax`` (scores say which, not whether): the k best-scored present triples, k = its number of targets."""
    if kind == "bce":
        return ((logits > 0) == (targets > 0.5)).logical_or(~scored).all(dim=1)
    count = (targets > 0.5).sum(dim=1)
    rank = logits.masked_fill(~scored, float("-inf")).argsort(dim=1, descending=True).argsort(dim=1)
    return ((rank < count[:, None]) == (targets > 0.5)).logical_or(~scored).all(dim=1)


def _loss_and_hits(model, head: torch.nn.Module, samples: Sequence[GroundingSample], target_loss: str = "bce"):
    """The target loss over the present objects' triples (:func:`_target_loss`; + the method's CE); per
    expression, whether the predicted target set is exact, and whether its best-scored present triple is its
    target (-1 for expressions of several targets)."""
    fused, ce = model.text_path(samples_to_batch([s.clip for s in samples]))
    logits = head(fused.float())
    targets = torch.from_numpy(np.concatenate([s.targets for s in samples])).to(logits.device)
    scored = targets >= 0
    loss = _target_loss(logits, targets, scored, target_loss)
    hits = _predicted_sets(logits, targets, scored, target_loss)
    best = logits.masked_fill(~scored, float("-inf")).argmax(dim=1)
    single = (targets == 1).sum(dim=1) == 1
    picks = torch.where(single, (targets.gather(1, best[:, None]).squeeze(1) == 1).long(), -1)
    return loss, ce, hits, picks


def grounding_scores(model, head: torch.nn.Module, samples: Sequence[GroundingSample], *,
                     batch_size: int = 16, target_loss: str = "bce") -> tuple[dict[str, float], dict[str, float]]:
    """Held-out scores, in ``all`` and per kind: the share of expressions whose predicted target set is exact
    (as ``target_loss`` reads a set from the scores: :func:`_predicted_sets`), and, over the expressions of one
    target, the share whose best-scored present object is it (the "pick").

    Why both: "which shape never moves?" among three objects is exact only when one score is positive and the
    others negative; a text path that ranks the target first but is unsure scores 0 exact and shows in the pick.
    """
    exact: dict[str, list[bool]] = collections.defaultdict(list)
    pick: dict[str, list[bool]] = collections.defaultdict(list)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for first in range(0, len(samples), batch_size):
            chunk = samples[first : first + batch_size]
            kinds = [k for s in chunk for k in s.kinds]
            _, _, hits, picks = _loss_and_hits(model, head, chunk, target_loss)
            for kind, hit, picked in zip(kinds, hits.tolist(), picks.tolist()):
                for key in (kind, "all"):
                    exact[key].append(hit)
                    if picked >= 0:
                        pick[key].append(bool(picked))
    model.train(was_training)
    return ({k: float(np.mean(v)) for k, v in sorted(exact.items())},
            {k: float(np.mean(v)) for k, v in sorted(pick.items())})


def pretrain_grounding(
    model,
    cfg: GroundingPretrainConfig,
    batches_from: Callable[[int], Iterator[list[GroundingSample]]],
    *,
    heldout: Sequence[GroundingSample],
    folder: str,
    log_every: int = 50,
    deadline: float | None = None,
) -> dict:
    """Train ``model``'s text path (stage G) into ``folder``; load it when ``folder`` holds a complete run, resume
    it when ``folder`` holds an incomplete one of the same settings.

    ``batches_from(first_sample, focus_share)`` yields lists of ``cfg.videos_per_step`` samples from sample
    ``first_sample`` on, a ``focus_share`` of them focused (:func:`grounding_sample_stream`); it is called again
    from the data position when ``cfg.focus_steps`` ends the focus phase (:func:`focus_share_at`);
    ``heldout`` is scored every ``cfg.eval_every`` steps and at the end, and the stage is saved after each. A
    ``deadline`` (a ``time.perf_counter()`` value) stops it early, saved. The head's init uses its own generator, so
    the global RNG is untouched. Returns the summary (:data:`SUMMARY_FILE`; ``complete`` False when stopped).
    """
    summary = read_summary(folder)
    if summary and summary.get("complete") and not _extends(summary, cfg):
        load_text_path(model, folder)
        _LOG.info("grounding stage already complete in %s (%d steps): loaded its text path", folder, summary["steps"])
        return summary
    os.makedirs(folder, exist_ok=True)
    device = model.device
    head = throwaway_linear_head(model.cfg.method.seg_embed_dim, len(TARGET_TRIPLES), seed=cfg.head_seed, device=device)
    params = [p for n, p in model.named_parameters() if n.startswith(TEXT_PATH_PREFIXES) and p.requires_grad]
    params += list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    decay_steps = cfg.steps if cfg.lr_schedule == "linear" else None
    scheduler = build_scheduler(optimizer, warmup_steps=cfg.warmup_steps, decay_steps=decay_steps)
    evaluations: list[dict] = []
    done, next_sample, seconds_before = 0, 0, 0.0
    if _resumes(summary, cfg) and os.path.exists(os.path.join(folder, STATE_FILE)):
        load_text_path(model, folder)
        state = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=False)
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        done, next_sample = int(state["step"]), int(state["next_sample"])
        evaluations, seconds_before = list(summary["evaluations"]), float(summary["seconds"])
        _LOG.info("grounding stage resumed from %s at step %d (next sample %d)", folder, done, next_sample)
    elif summary is not None:
        _LOG.warning("%s holds an incomplete grounding stage of other settings: it starts again", folder)
    started = time.perf_counter()
    losses: list[float] = []

    def save(step: int) -> dict:
        """Weights, state, then the summary, each by a rename: a kill leaves a folder that resumes."""
        from safetensors.torch import save_file

        weights = os.path.join(folder, WEIGHTS_FILE)
        save_file({n: p.detach().float().cpu().contiguous() for n, p in model.named_parameters()
                   if n.startswith(TEXT_PATH_PREFIXES)}, weights + ".tmp")
        os.replace(weights + ".tmp", weights)
        state_path = os.path.join(folder, STATE_FILE)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "head": head.state_dict(), "step": step, "next_sample": next_sample}, state_path + ".tmp")
        os.replace(state_path + ".tmp", state_path)
        out = {"config": asdict(cfg), "complete": step >= cfg.steps, "steps": step,
               "seconds": seconds_before + time.perf_counter() - started,
               "heldout_expressions": sum(len(s.kinds) for s in heldout), "evaluations": evaluations}
        write_json(os.path.join(folder, SUMMARY_FILE), out)
        return out

    share = focus_share_at(cfg, done + 1)
    batches = batches_from(next_sample, share)
    model.train()
    out = None
    for step in range(done + 1, cfg.steps + 1):
        if (wanted := focus_share_at(cfg, step)) != share:
            share = wanted
            _LOG.info("grounding step %d: the focus phase ends; clips are focused at share %s from here", step, share)
            batches = batches_from(next_sample, share)
        samples = next(batches)
        next_sample = max(next_sample, max(s.clip.sample_id for s in samples) + 1)
        target, ce, _, _ = _loss_and_hits(model, head, samples, cfg.target_loss)
        loss = target + (cfg.ce_weight * ce if ce is not None else 0.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)
        optimizer.step()
        scheduler.step()
        losses.append(target.item())
        if step % log_every == 0 or step == done + 1:
            _LOG.info("grounding step %d/%d: target loss %.4f, %.2fs/step", step, cfg.steps,
                      float(np.mean(losses[-log_every:])), (time.perf_counter() - started) / (step - done))
        stop = deadline is not None and time.perf_counter() > deadline
        if step % cfg.eval_every == 0 or step == cfg.steps:
            accuracy, pick = grounding_scores(model, head, heldout, target_loss=cfg.target_loss)
            evaluations.append({"step": step, "seconds": seconds_before + time.perf_counter() - started,
                                "loss": float(np.mean(losses[-log_every:])), "accuracy": accuracy, "pick": pick})
            _LOG.info("grounding step %d: held-out target sets exact %.3f (%s); one-target picks right %.3f (%s)",
                      step, accuracy["all"], ", ".join(f"{k} {v:.2f}" for k, v in accuracy.items() if k != "all"),
                      pick.get("all", float("nan")), ", ".join(f"{k} {v:.2f}" for k, v in pick.items() if k != "all"))
            out = save(step)
        elif stop:
            out = save(step)
        if stop and step < cfg.steps:
            _LOG.warning("grounding stage stopped by its deadline at step %d of %d (saved; run again to continue)",
                         step, cfg.steps)
            return out
    return out if out is not None else save(done)


def focus_share_at(cfg: GroundingPretrainConfig, step: int) -> float:
    """The focus share of step ``step`` (1-based): ``focus_share`` within the first ``focus_steps`` (all steps when
    0), ``focus_share_after`` later."""
    return cfg.focus_share if not cfg.focus_steps or step <= cfg.focus_steps else cfg.focus_share_after


def _resumes(summary: dict | None, cfg: GroundingPretrainConfig) -> bool:
    """Whether ``cfg`` continues the stage of ``summary``: the same settings, where a constant schedule's
    ``steps`` may differ (its rate does not depend on them, so a longer run goes on where a shorter one ended)."""
    if summary is not None and cfg.lr_schedule == "constant":
        summary = {**summary, "config": {**summary.get("config", {}), "steps": cfg.steps}}
    return same_settings(summary, cfg)


def _extends(summary: dict, cfg: GroundingPretrainConfig) -> bool:
    """Whether ``cfg`` asks a complete constant-schedule stage of ``summary`` for more steps than it ran."""
    return cfg.lr_schedule == "constant" and int(summary.get("steps", 0)) < cfg.steps and _resumes(summary, cfg)


def load_text_path(model, folder: str) -> None:
    """Load :data:`WEIGHTS_FILE` of ``folder`` into ``model`` (every text-path weight, nothing else)."""
    from safetensors.torch import load_file

    path = os.path.join(folder, WEIGHTS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no pretrained text path there (run the grounding stage first)")
    state = load_file(path)
    expected = {n for n, _ in model.named_parameters() if n.startswith(TEXT_PATH_PREFIXES)}
    if set(state) != expected:
        raise ValueError(f"{path}: text-path weights do not fit this model (missing {sorted(expected - set(state))[:5]}, "
                         f"unexpected {sorted(set(state) - expected)[:5]})")
    shapes = {n: p.shape for n, p in model.named_parameters()}
    wrong = [n for n, v in state.items() if v.shape != shapes[n]]
    if wrong:
        raise ValueError(f"{path}: text-path weights of other sizes than this model's: {wrong[:5]}")
    model.load_state_dict(state, strict=False)


def load_grounding_head(model, folder: str) -> torch.nn.Linear:
    """The throw-away target head of the stage G in ``folder`` (its :data:`STATE_FILE`), on ``model``'s device.

    Why keep using a head that training throws away: scoring a later model's TAK' with it (:func:`grounding_scores`)
    tells how much of stage G's grounding survives stage 1 (``research/decode_diagnostics.py --grounding-folder``).
    """
    path = os.path.join(folder, STATE_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no stage G state there (the head is saved with the optimiser state)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    head = throwaway_linear_head(model.cfg.method.seg_embed_dim, len(TARGET_TRIPLES), seed=0, device="cpu")
    try:
        head.load_state_dict(state["head"])
    except (KeyError, RuntimeError) as exc:
        raise ValueError(f"{path}: its head does not fit this model's TAK' "
                         f"({model.cfg.method.seg_embed_dim} wide): {exc}") from exc
    return head.to(model.device)


def read_summary(folder: str) -> dict | None:
    """:data:`SUMMARY_FILE` of ``folder``, or None when there is none."""
    return read_json_if_exists(os.path.join(folder, SUMMARY_FILE))
