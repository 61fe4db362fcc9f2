"""scripts/motion_reasoning_probe.py: its oracle questions carry the answer, and its reasoner can fit them."""
from __future__ import annotations

import torch

from tests.scripts import load_script


def _load():
    return load_script("motion_reasoning_probe")


def test_oracle_questions_carry_their_answer_in_the_object_tracks():
    probe = _load()
    data = probe.questions(7, 40, lambda video: probe.oracle_tokens(video, slice(None, None, 2), 1.0))
    tokens, kinds, present, targets = data["tokens"], data["kind"], data["present"], data["target"]
    assert tokens.shape[1:] == (8, 4, 26) and set(kinds.tolist()) == {0, 1}
    assert present[torch.arange(len(targets)), targets].all()  # the target is one of the video's objects
    right = []
    for row in range(len(targets)):
        slots = tokens[row, 0, :, :24].sum(-1) > 0
        spread = tokens[row][:, slots, 24:].std(dim=0).sum(-1)  # per object: spread of its centres over frames
        triples = tokens[row, 0, slots, :24].argmax(-1)
        answer = triples[spread.argmin() if kinds[row] == 0 else spread.argmax()]
        right.append(bool(answer == targets[row]))
    assert sum(right) / len(right) >= 0.95, sum(right) / len(right)


def test_the_reasoner_fits_a_few_questions():
    probe = _load()
    torch.manual_seed(0)
    data = probe.questions(7, 12, lambda video: probe.oracle_tokens(video, slice(None, None, 2), 10.0))
    model = probe.MotionReasoner(26, 8, width=32, layers=1)
    before = probe.accuracy(model, data)
    history = probe.train(model, data, data, steps=300, batch=len(data["kind"]), lr=3e-3, eval_every=300)
    assert min(history[-1]["static"], history[-1]["fastest"]) == 1.0, (before, history)
