"""From-scratch aids of the learnability research: not in the method, never in ``jobs.train``.

A random-init model lacks what pretraining gives the real one; these terms and tools stand in for it:

* :func:`tak_separation_loss` - pushes apart the TAK embeddings of expressions of one clip that name
  different objects, so a random-init LLM must read the expression words.
* :func:`expression_word_loss` - half of the TAK' dimensions mirror the expression's bag of words.
* :func:`aid_losses` - the two as extra loss terms of ``pipelines.training.train_loop.train_step``.
* :func:`scale_seg_head_init` - a larger initial scale of the seg head's output, the prompt token SAM2 reads.
* :class:`WeightEma` - an exponential moving average of the weights to evaluate and export.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipelines.training.train_loop import LossTerm

if TYPE_CHECKING:
    import torch

__all__ = [
    "AID_METRICS",
    "EMA_NAME",
    "TRAIN_KEYFRAME_RULES",
    "AidLoss",
    "WeightEma",
    "aid_losses",
    "expression_word_loss",
    "expression_words",
    "scale_seg_head_init",
    "tak_separation_loss",
]

def tak_separation_loss(
    fused_tak: torch.Tensor, batch: Any, *, same_target_iou: float = 0.5
) -> torch.Tensor:
    """From-scratch aid (NOT in the method, off in ``jobs.train``): mean ``relu(cos(k_i, k_j))`` over
    the pairs of expressions of one clip whose targets differ (mask IoU over the clip's frames below
    ``same_target_iou``).

    Why: a random-init LLM attends almost uniformly over a ~400-token prompt, so the 3-5 expression
    tokens barely move the hidden state before ``[TAK]``; the CE loss supervises the fixed answer text,
    which does not depend on the expression, and the mask loss alone lets the model settle on "segment
    every shape" with TAK embeddings that are equal for every expression of a video
    (cos >= 0.9999). This term is zero once embeddings of expressions that name different objects
    are orthogonal, so it only breaks that symmetry; the mask loss decides what they encode.
    Expressions of the same object (e.g. a referring and a reasoning one) are not pushed apart, and
    two expressions without a target count as the same target.

    Args:
        fused_tak: (N, D) TAK' of every expression of the batch, in batch order (``VrshqOutput.fused_tak``).
        batch: the ``TrainBatch`` the forward ran on (its masks define the targets).
        same_target_iou: pairs at or above this IoU are the same target.

    Returns:
        A scalar (0 with no pair of different targets).

    Raises:
        ValueError: ``fused_tak`` does not have one row per expression of ``batch``.
    """
    import torch
    import torch.nn.functional as F

    if fused_tak.dim() != 2 or fused_tak.shape[0] != batch.num_expressions:
        raise ValueError(
            f"fused_tak must be (num_expressions={batch.num_expressions}, D), got {tuple(fused_tak.shape)}"
        )
    unit = F.normalize(fused_tak.float(), dim=-1)
    terms = []
    start = 0
    for video in batch.videos:
        count = int(video.masks.shape[0])
        k = unit[start : start + count]
        start += count
        if count < 2:
            continue
        m = video.masks.reshape(count, -1).to(device=k.device, dtype=torch.float32)
        inter = m @ m.T
        union = m.sum(1)[:, None] + m.sum(1)[None, :] - inter
        iou = torch.where(union > 0, inter / union.clamp(min=1.0), torch.ones_like(union))
        different = (iou < same_target_iou) & ~torch.eye(count, dtype=torch.bool, device=k.device)
        if different.any():
            terms.append(F.relu(k @ k.T)[different])
    if not terms:
        return unit.sum() * 0.0
    return torch.cat(terms).mean()


_AID_STOP_WORDS = frozenset({"a", "an", "the", "that", "which", "what", "is", "of", "it"})


def expression_words(text: str) -> frozenset[str]:
    """Lower-cased content words of an expression (:func:`expression_word_loss`).

    >>> sorted(expression_words("Which shape moves the fastest?"))
    ['fastest', 'moves', 'shape']
    """
    import re

    return frozenset(w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _AID_STOP_WORDS)


def expression_word_loss(fused_tak: torch.Tensor, batch: Any, *, text_fraction: float = 0.5) -> torch.Tensor:
    """From-scratch aid (NOT in the method, off in ``jobs.train``): the first ``text_fraction`` of the
    TAK' dimensions mirror the expressions' words. Mean over all pairs of expressions of the batch of
    ``(cos(k_i, k_j) - b_ij)**2`` on that slice, where ``b_ij = |w_i & w_j| / sqrt(|w_i| |w_j|)`` is
    the cosine of their binary bag-of-words vectors (:func:`expression_words`).

    Why: a pretrained MLLM reads the expression; a random-init one attends almost uniformly over a
    ~100-400-token prompt, so its TAK barely depends on the 3-5 expression tokens and SAM2 learns to
    segment every shape. Measured on CPU with the ``learn`` preset's SAM2 alone on single frames, 675
    steps at batch 16: a bag-of-words prompt reaches train IoU ~0.8, a zero prompt stays at ~0.45-0.5
    (the "every shape" plateau). This term uses only the input text (no label): it makes the TAK carry
    the words, like a pretrained LLM would. The other dimensions stay free, so a reasoning expression
    ("which shape moves the fastest?", the same words in every video) can still encode its video's
    answer.

    Args:
        fused_tak: (N, D) TAK' of every expression of the batch, in batch order.
        batch: the ``TrainBatch`` (its videos must carry ``expressions``).
        text_fraction: the share of the D dimensions constrained (from the first).

    Raises:
        ValueError: shapes do not match, or the batch has no expression texts.
    """
    import torch
    import torch.nn.functional as F

    texts = [t for v in batch.videos for t in v.expressions]
    if fused_tak.dim() != 2 or fused_tak.shape[0] != batch.num_expressions or len(texts) != fused_tak.shape[0]:
        raise ValueError(
            f"expression_word_loss needs fused_tak (num_expressions={batch.num_expressions}, D) and a batch whose "
            f"videos carry their expression texts; got {tuple(fused_tak.shape)} and {len(texts)} texts"
        )
    if not 0 < text_fraction <= 1:
        raise ValueError(f"text_fraction={text_fraction!r}: must be in (0, 1]")
    n = len(texts)
    if n < 2:
        return fused_tak.sum() * 0.0
    words = [expression_words(t) for t in texts]
    target = torch.tensor(
        [[len(a & b) / math.sqrt(len(a) * len(b)) if a and b else float(a == b) for b in words] for a in words],
        device=fused_tak.device,
    )
    dims = max(1, int(round(fused_tak.shape[1] * text_fraction)))
    unit = F.normalize(fused_tak[:, :dims].float(), dim=-1)
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=fused_tak.device)
    return ((unit @ unit.T - target)[off_diagonal] ** 2).mean()


def scale_seg_head_init(model: torch.nn.Module, gain: float) -> None:
    """From-scratch aid (NOT in the method): multiply the seg head's last Linear (weight and bias)
    by ``gain`` at initialisation, so its output, the TAK token of SAM2's sparse prompt, starts with
    ``gain`` times its norm.

    Why: at random init the seg head gives TAK embeddings of norm ~1.4 while SAM2's other prompt
    and output tokens (``not_a_point_embed``, the mask tokens) have norm ~11 (N(0, 1) rows of
    width 128). Measured on the ``learn`` preset at init: two different prompts of norm 1.4 change
    the window logits by ~1% of their magnitude, prompts of norm 11 by ~9%. A decoder that barely
    sees the prompt learns the "segment every shape" solution and then ignores the prompt for good
    (trained 800-950 steps: the mask for a zero prompt equals the mask for the TAK). Call once,
    right after the random init; never on loaded weights.

    Raises:
        ValueError: ``gain`` is not a finite number > 0.
    """
    import torch

    if not (isinstance(gain, (int, float)) and not isinstance(gain, bool) and math.isfinite(gain) and gain > 0):
        raise ValueError(f"gain={gain!r}: must be a finite number > 0")
    last = model.seg_head.mlp[2]
    with torch.no_grad():
        last.weight.mul_(gain)
        if last.bias is not None:
            last.bias.mul_(gain)


@dataclass(frozen=True)
class AidLoss:
    """An aid as an extra loss term of ``train_step``: ``weight * fn(out.fused_tak, batch)``, reported as ``name``."""

    name: str
    weight: float
    fn: Callable[[Any, Any], Any]

    def __call__(self, out: Any, batch: Any) -> LossTerm:
        if not out.fused_tak.requires_grad:
            raise ValueError(
                "the from-scratch aids need fused_tak with its graph: run the plain model, not a "
                "loss_only_forward wrapper"
            )
        return LossTerm(self.name, self.fn(out.fused_tak, batch), self.weight)


TRAIN_KEYFRAME_RULES: tuple[str, ...] = ("tda", "largest_target")
"""Training keyframe rules: the method's (``tda``, the argmax of the TDA weights) or the aid that trains on the
frame of the largest target (``vrshq.model.tks.largest_target_keyframe``, set as ``VrshqModel.train_keyframe_rule``)."""

AID_METRICS = ("sep_loss", "word_loss")
"""The names :func:`aid_losses` reports its terms under (0 in a step's log while an aid is off)."""


def aid_losses(*, tak_separation_weight: float = 0.0, expression_word_weight: float = 0.0) -> list[AidLoss]:
    """The extra loss terms of the aids whose weight is > 0 (none: the method's losses alone).

    Raises:
        ValueError: a weight is not a finite number >= 0 (the message names it).
    """
    terms = []
    for name, weight, metric, fn in (
        ("tak_separation_weight", tak_separation_weight, "sep_loss", tak_separation_loss),
        ("expression_word_weight", expression_word_weight, "word_loss", expression_word_loss),
    ):
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
            raise ValueError(f"{name}={weight!r}: must be a finite number >= 0")
        if weight > 0:
            terms.append(AidLoss(metric, float(weight), fn))
    return terms


# ------------------------------------------------------------------------------------ weights


EMA_NAME = "ema.safetensors"
"""The :class:`WeightEma` of a training checkpoint folder (float32 averaged weights + decay/updates)."""


class WeightEma:
    """Exponential moving average of the trainable weights, for evaluation and export.

    Why: from scratch, held-out J&F of the ``learn`` preset swings by ~0.05 between evaluations a few
    dozen steps apart (keyframe and object choices on knife edges); the average over the last
    ~1/(1-decay) steps is a steadier model to score and ship. Float32 copies; the effective decay
    warms up as ``min(decay, (1 + n) / (10 + n))`` so the first updates track the weights.
    ``swapped_in`` puts the average into the model for a block and restores the weights exactly.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        import torch

        if not 0 < decay < 1:
            raise ValueError(f"decay={decay!r}: must be in (0, 1)")
        self.decay = float(decay)
        self.updates = 0
        self._params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.shadow = {n: p.detach().to(torch.float32, copy=True) for n, p in self._params}

    def update(self) -> None:
        """Fold the current weights in (call after every optimiser step)."""
        import torch

        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            torch._foreach_lerp_([self.shadow[n] for n, _ in self._params],
                                 [p.detach().float() for _, p in self._params], 1.0 - decay)
        self.updates += 1

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its own weights again after it."""
        import torch

        saved = [p.detach().clone() for _, p in self._params]
        try:
            with torch.no_grad():
                for n, p in self._params:
                    p.copy_(self.shadow[n])
            yield
        finally:
            with torch.no_grad():
                for (_, p), w in zip(self._params, saved):
                    p.copy_(w)

    def save(self, path: str) -> None:
        """Write the averaged weights and the update count (safetensors, local path)."""
        from safetensors.torch import save_file

        save_file({n: t.contiguous() for n, t in self.shadow.items()}, path,
                  metadata={"decay": repr(self.decay), "updates": str(self.updates)})

    def load(self, path: str) -> None:
        """Restore :meth:`save`'s file; the trainable names and shapes must match the model's."""
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            names, updates = set(f.keys()), int(f.metadata()["updates"])
            if names != set(self.shadow):
                raise ValueError(f"{path}: EMA weights {len(names)} do not match the model's {len(self.shadow)} "
                                 f"trainable weights (e.g. {sorted(names ^ set(self.shadow))[:3]})")
            for n, t in self.shadow.items():
                loaded = f.get_tensor(n)
                if loaded.shape != t.shape:
                    raise ValueError(f"{path}: EMA weight {n} has shape {tuple(loaded.shape)}, the model {tuple(t.shape)}")
                t.copy_(loaded)
        self.updates = updates
