"""``research.learnability`` command line: bad configurations fail before any work, and the learnability run
writes a model that the inference loader reads."""
from __future__ import annotations

import itertools
import json
import os

import pytest

from tests.job_help import assert_help_lists_every_setting


def _tiny_run(out, *, steps: int, videos_per_step: int) -> list[str]:
    """The settings every small learnability run here shares: the tiny preset on 6-frame 40 px videos, one
    held-out video scored every 2 steps, data in the main process, one thread."""
    return ["--out", str(out), "--preset", "tiny", "--steps", str(steps), "--videos-per-step", str(videos_per_step),
            "--video-frames", "6", "--video-size", "40", "--heldout-videos", "1", "--eval-every", "2",
            "--data-workers", "0", "--threads", "1", "--warmup-steps", "1"]


def _stop_at_2_then_continue(args: list[str]) -> None:
    """Run the learnability job stopped at step 2, then the same command again (which continues the run);
    torch's thread count, which the job sets, is restored for the other tests."""
    import torch

    from research import learnability

    threads = torch.get_num_threads()
    try:
        assert learnability.main([*args, "--stop-at-step", "2"]) == learnability.EXIT_UNFINISHED
        assert learnability.main(args) == 0
    finally:
        torch.set_num_threads(threads)


def test_learnability_smoke_run_writes_a_loadable_model(tmp_path, capsys):
    import torch

    from pipelines.inference.config import InferenceConfig
    from pipelines.inference.model_loader import build_model
    from research import learnability

    threads = torch.get_num_threads()
    out = tmp_path / "learn"
    try:
        status = learnability.main([
            *_tiny_run(out, steps=3, videos_per_step=1), "--track.steps", "2", "--track.window", "4",
            "--track.clips-per-step", "2", "--track.warmup-steps", "1",
        ])
    finally:
        torch.set_num_threads(threads)
    assert status == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    summary = json.loads((out / "heldout.json").read_text())
    assert final["step"] == summary["step"] == 3 and [e["step"] for e in summary["evaluations"]] == [2, 3]
    assert 0 <= final["jf"] <= 1 and final["jf"] == summary["final"]["jf"]
    assert (out / "curve.png").stat().st_size > 1000
    assert len((out / "log.csv").read_text().strip().splitlines()) == 4  # header + 3 steps
    assert json.loads((out / "checkpoint" / "train_state.json").read_text())["step"] == 3
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "curve.png", "heldout.json", "log.csv", "model",
                                                     "track_pretrain"]
    track = json.loads((out / "track_pretrain" / "track.json").read_text())
    assert track["complete"] and track["steps"] == 2 and [e["step"] for e in track["evaluations"]] == [2]
    assert 0 <= track["evaluations"][0]["j_true_keyframe"] <= 1
    model = build_model(InferenceConfig(out=str(tmp_path / "o"), manifest="m.parquet",
                                        checkpoint=os.fspath(out / "model"), device="cpu"))
    assert model.cfg.name == "tiny"


def test_learnability_keeps_the_checkpoint_of_its_last_evaluation_when_killed(tmp_path, monkeypatch):
    """Outputs are saved at every evaluation, so a run killed later (here: at step 3) can be resumed."""
    import torch

    import pipelines.training.train_loop as train_loop
    from research import learnability

    calls = {"n": 0}

    original = train_loop.train_step

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return original(*args, **kwargs)

    monkeypatch.setattr(train_loop, "train_step", dying_step)
    threads = torch.get_num_threads()
    out = tmp_path / "learn"
    args = [*_tiny_run(out, steps=4, videos_per_step=1), "--track.steps", "0"]
    try:
        with pytest.raises(KeyboardInterrupt):
            learnability.main(args)
        assert json.loads((out / "checkpoint" / "train_state.json").read_text())["step"] == 2
        assert json.loads((out / "heldout.json").read_text())["step"] == 2
        monkeypatch.setattr(train_loop, "train_step", original)
        assert learnability.main([*args, "--resume", str(out / "checkpoint")]) == 0
    finally:
        torch.set_num_threads(threads)
    summary = json.loads((out / "heldout.json").read_text())
    assert summary["step"] == 4 and [e["step"] for e in summary["evaluations"]] == [2, 4]
    assert len((out / "log.csv").read_text().strip().splitlines()) == 5  # header + steps 1, 2 (kept) + 3, 4


def test_a_tuple_field_takes_one_yaml_list_or_repeated_flags():
    from jobs._cli import ConfigError, parse_config
    from research.config import LearnabilityConfig
    from research.config import LearnabilityConfig

    def parse(*argv: str):
        return parse_config(LearnabilityConfig, ["--out", "o", *argv], prog="t", description="t")

    assert parse().expression_types == (0, 1)  # the held-out task, no no-target expressions
    assert parse("--expression-types", "[0, 2]").expression_types == (0, 2)
    assert parse("--expression-types", "0", "--expression-types", "1").expression_types == (0, 1)
    assert parse("--expression-types", "1").expression_types == (1,)
    with pytest.raises(ConfigError, match=r"expression_types=\(0, 3\): must be a non-empty subset"):
        parse("--expression-types", "[0, 3]")


def test_learnability_with_a_weight_average_scores_exports_and_resumes_the_average(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    from research import aids, learnability

    updates: list[int] = []
    original_update = aids.WeightEma.update

    def counting_update(self):
        original_update(self)
        updates.append(self.updates)

    monkeypatch.setattr(aids.WeightEma, "update", counting_update)
    threads = torch.get_num_threads()
    out = tmp_path / "learn"
    args = [*_tiny_run(out, steps=4, videos_per_step=1), "--lr", "0.01", "--sam2-lr", "0.01", "--text-lr", "0.01",
            "--track.steps", "0"]
    try:
        assert learnability.main([*args, "--steps", "2", "--ema-decay", "0.9"]) == 0
        assert learnability.main([*args, "--ema-decay", "0.9", "--resume", str(out / "checkpoint")]) == 0
    finally:
        torch.set_num_threads(threads)
    assert updates == [1, 2, 3, 4]  # the resumed average continues from its saved update count
    ema = load_file(str(out / "checkpoint" / aids.EMA_NAME))
    raw = load_file(str(out / "checkpoint" / "model.safetensors"))
    exported = load_file(str(out / "model" / "model.safetensors"))
    moved = [n for n in ema if not torch.allclose(ema[n], raw[n])]
    assert moved, "after 4 steps at lr 0.01 the average differs from the weights"
    for name in moved[:20]:  # the exported (scored) model is the average, in bf16
        assert torch.equal(exported[name], ema[name].to(torch.bfloat16)), name


def test_weight_ema_update_swap_and_file_round_trip(tmp_path):
    import torch

    from research.aids import WeightEma

    model = torch.nn.Linear(3, 2)
    frozen = torch.nn.Parameter(torch.ones(1), requires_grad=False)
    model.register_parameter("frozen", frozen)
    start = model.weight.detach().clone()
    ema = WeightEma(model, 0.9)
    assert set(ema.shadow) == {"weight", "bias"}
    expected = start.clone()
    for k in range(3):
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update()
        decay = min(0.9, (1 + k) / (10 + k))
        expected = decay * expected + (1 - decay) * model.weight.detach()
    torch.testing.assert_close(ema.shadow["weight"], expected)
    current = model.weight.detach().clone()
    with ema.swapped_in():
        torch.testing.assert_close(model.weight.detach(), expected)
    assert torch.equal(model.weight.detach(), current)
    ema.save(str(tmp_path / "ema.safetensors"))
    again = WeightEma(model, 0.9)
    again.load(str(tmp_path / "ema.safetensors"))
    assert again.updates == 3 and torch.equal(again.shadow["weight"], ema.shadow["weight"])
    with pytest.raises(ValueError, match="do not match"):
        WeightEma(torch.nn.Linear(3, 3, bias=False), 0.9).load(str(tmp_path / "ema.safetensors"))
    with pytest.raises(ValueError, match="decay"):
        WeightEma(model, 1.0)


def test_learnability_trains_sam2_on_the_window_it_is_given(tmp_path, monkeypatch):
    import torch

    from research import learnability
    from vrshq.model.sam2_segmenter import Sam2Segmenter

    seen: list[tuple[int, ...]] = []
    original = Sam2Segmenter.train_window_forward

    def recording(self, images, cond_pos, prompt_embeds):
        out = original(self, images, cond_pos, prompt_embeds)
        seen.append((images.shape[1], out.logits.shape[1]))
        return out

    monkeypatch.setattr(Sam2Segmenter, "train_window_forward", recording)
    threads = torch.get_num_threads()
    try:
        assert learnability.main([
            "--out", str(tmp_path / "w5"), "--preset", "tiny", "--steps", "2", "--videos-per-step", "2",
            "--video-frames", "6", "--video-size", "40", "--heldout-videos", "1", "--eval-every", "2",
            "--data-workers", "0", "--threads", "1", "--warmup-steps", "1", "--image-ratio", "0",
            "--train-window", "5", "--track.steps", "0",
        ]) == 0
    finally:
        torch.set_num_threads(threads)
    assert seen and set(seen) == {(5, 5)}
    from jobs._cli import ConfigError, parse_config
    from research.config import LearnabilityConfig

    with pytest.raises(ConfigError, match="train_window=9"):
        parse_config(LearnabilityConfig, ["--out", "o", "--train-window", "9"], prog="t", description="t")


def test_after_stage_0_only_the_mask_decoder_of_sam2_trains_and_a_continued_run_keeps_stage_0s_weights(tmp_path):
    """The method's trainable set after tracking pretraining: the tracking-trained image encoder and memory path stay
    as stage 0 left them, also across --resume (the training checkpoint holds only trainable weights)."""
    import torch
    from safetensors.torch import load_file

    from research import learnability

    threads = torch.get_num_threads()
    out = tmp_path / "learn"
    args = [*_tiny_run(out, steps=3, videos_per_step=2), "--image-ratio", "0", "--track.steps", "2",
            "--track.window", "4", "--track.clips-per-step", "2", "--track.warmup-steps", "1"]
    try:
        # the 3-step schedule, stopped at step 2
        assert learnability.main([*args, "--stop-at-step", "2"]) == learnability.EXIT_UNFINISHED
        assert json.loads((out / "checkpoint" / "train_state.json").read_text())["step"] == 2
        assert learnability.main(args) == 0  # the same command again continues the run (no --resume needed)
    finally:
        torch.set_num_threads(threads)
    assert [e["step"] for e in json.loads((out / "heldout.json").read_text())["evaluations"]] == [2, 3]
    task = json.loads((out / "model" / learnability.TASK_FILE).read_text())
    assert task["training"]["stage0"]["steps"] == 2 and task["training"]["stage0"]["complete"]
    stage0 = load_file(str(out / "track_pretrain" / "sam2.safetensors"))
    final = load_file(str(out / "model" / "model.safetensors"))
    frozen = [k for k in stage0 if k.startswith(("image_encoder.", "memory_attention.", "memory_encoder."))]
    trained = [k for k in stage0 if k.startswith("sam_mask_decoder.")]
    assert frozen and trained
    for key in frozen:  # bf16 export of the float32 stage-0 weights
        torch.testing.assert_close(final[f"sam2.sam2.{key}"].float(), stage0[key].to(torch.bfloat16).float())
    assert any(not torch.equal(final[f"sam2.sam2.{k}"].float(), stage0[k].to(torch.bfloat16).float()) for k in trained)
    assert json.loads((out / "heldout.json").read_text())["step"] == 3


def test_stage_0_of_the_cli_feeds_the_attribute_aid_its_objects(tmp_path):
    """The CLI's stage-0 windows carry every object's masks when the aid is on (and only then): its loss is logged."""
    import csv

    import torch

    from research import learnability

    threads = torch.get_num_threads()
    out = tmp_path / "learn"
    args = [*_tiny_run(out, steps=1, videos_per_step=2), "--image-ratio", "0", "--track.steps", "2",
            "--track.window", "3", "--track.clips-per-step", "2", "--track.warmup-steps", "1",
            "--track.attribute-weight", "1"]
    try:
        assert learnability.main(args) == 0
    finally:
        torch.set_num_threads(threads)
    with open(out / "track_pretrain" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(float(r["attribute_loss"]) > 0 for r in rows)


def test_vision_trainable_trains_the_tower_and_a_continued_run_keeps_its_weights(tmp_path):
    """--vision-trainable: the random tower learns in stage 1, its weights are in the training checkpoint (the
    trainable set), and the continued run starts from them rather than from a fresh random tower."""
    import torch
    from safetensors.torch import load_file

    from pipelines.training.train_config import ModelSpec
    from pipelines.training.train_loop import build_training_model
    from research import learnability

    threads = torch.get_num_threads()
    out = tmp_path / "learn"
    args = [*_tiny_run(out, steps=3, videos_per_step=2), "--image-ratio", "0", "--track.steps", "0",
            "--vision-trainable"]
    try:
        assert learnability.main([*args, "--stop-at-step", "2"]) == learnability.EXIT_UNFINISHED
        stopped = {k: v.clone() for k, v in load_file(str(out / "model" / "model.safetensors")).items()
                   if k.startswith("vision.vision_tower.")}
        assert learnability.main(args) == 0
        init = build_training_model(ModelSpec(preset="tiny", seed=0), device="cpu").state_dict()
    finally:
        torch.set_num_threads(threads)
    final = load_file(str(out / "model" / "model.safetensors"))
    patch = "vision.vision_tower.embeddings.patch_embedding.weight"
    assert patch in stopped
    assert not torch.equal(final[patch].float(), init[patch].to(torch.bfloat16).float())  # it trained
    assert not torch.equal(final[patch], stopped[patch])  # and went on training from the stopped weights
    delta_from_stopped = (final[patch].float() - stopped[patch].float()).abs().max()
    delta_from_init = (final[patch].float() - init[patch].to(torch.bfloat16).float()).abs().max()
    assert delta_from_stopped < delta_from_init  # one step from the stopped run, not three from init


def test_stage_v_pretrains_the_tower_which_stays_frozen_and_a_continued_run_reloads_it(tmp_path):
    """--vision.steps: the tower is pretrained, frozen through stage 1, exported as pretrained, and a continued run
    (whose training checkpoint holds only trainable weights) reloads it instead of keeping a random tower."""
    import torch
    from safetensors.torch import load_file

    from research import learnability

    out = tmp_path / "learn"
    args = [*_tiny_run(out, steps=3, videos_per_step=2), "--image-ratio", "0", "--track.steps", "0",
            "--vision.steps", "3", "--vision.videos-per-step", "1", "--vision.probe-videos", "2"]
    _stop_at_2_then_continue(args)
    tower = load_file(str(out / learnability.VISION_DIR / "tower.safetensors"))
    final = load_file(str(out / "model" / "model.safetensors"))
    for key, value in tower.items():
        torch.testing.assert_close(final[f"vision.vision_tower.{key}"].float(), value.to(torch.bfloat16).float())
    task = json.loads((out / "model" / learnability.TASK_FILE).read_text())
    assert task["training"]["stage_v"]["complete"] and task["training"]["stage_v"]["steps"] == 3


def test_stage_g_text_path_stays_frozen_with_freeze_llm_and_a_continued_run_reloads_it(tmp_path):
    """--grounding.steps with --freeze-llm: the LLM and projector keep stage G's weights through stage 1 (also after
    a continued run, whose training checkpoint holds only trainable weights), while the seg head trains on."""
    import torch
    from safetensors.torch import load_file

    from research import learnability

    out = tmp_path / "learn"
    args = [*_tiny_run(out, steps=3, videos_per_step=2), "--image-ratio", "0", "--track.steps", "0",
            "--grounding.steps", "2", "--grounding.videos-per-step", "2", "--grounding.heldout-videos", "2",
            "--freeze-llm"]
    _stop_at_2_then_continue(args)
    stage_g = load_file(str(out / learnability.GROUNDING_DIR / "text_path.safetensors"))
    final = load_file(str(out / "model" / "model.safetensors"))
    frozen = [k for k in stage_g if not k.startswith("seg_head.")]
    assert frozen and any(k.startswith("mllm.") for k in frozen)
    for key in frozen:
        torch.testing.assert_close(final[key].float(), stage_g[key].to(torch.bfloat16).float())
    assert any(not torch.equal(final[k].float(), stage_g[k].to(torch.bfloat16).float())
               for k in stage_g if k.startswith("seg_head."))
    task = json.loads((out / "model" / learnability.TASK_FILE).read_text())
    assert task["training"]["stage_g"]["complete"] and task["training"]["stage_g"]["steps"] == 2


def test_max_minutes_stops_stage_g_saved_and_the_same_command_continues_it(tmp_path, monkeypatch, caplog):
    """A stage G cut by --max-minutes is saved, the run stops before stage 1, and the command again resumes it."""
    import torch

    from research import learnability
    from research.grounding_pretrain import read_summary

    out = tmp_path / "learn"
    args = [*_tiny_run(out, steps=2, videos_per_step=2), "--image-ratio", "0", "--track.steps", "0",
            "--grounding.steps", "3", "--grounding.videos-per-step", "2", "--grounding.heldout-videos", "2",
            "--grounding.eval-every", "2"]
    clock = iter(itertools.count(0.0, 3600.0))  # every reading an hour later: the deadline passes at once
    threads = torch.get_num_threads()
    try:
        with monkeypatch.context() as patched:
            patched.setattr(learnability.time, "perf_counter", lambda: next(clock))
            patched.setattr("research.grounding_pretrain.time.perf_counter", lambda: next(clock))
            assert learnability.main([*args, "--max-minutes", "1"]) == learnability.EXIT_UNFINISHED
        stopped = read_summary(str(out / learnability.GROUNDING_DIR))
        assert not stopped["complete"] and stopped["steps"] == 1 and not (out / "model").exists()
        with caplog.at_level("INFO"):
            assert learnability.main(args) == 0
    finally:
        torch.set_num_threads(threads)
    assert "grounding stage resumed" in caplog.text
    finished = read_summary(str(out / learnability.GROUNDING_DIR))
    assert finished["complete"] and finished["steps"] == 3 and [e["step"] for e in finished["evaluations"]] == [2, 3]
    assert (out / "model" / "model.safetensors").exists()


def test_settings_without_effect_are_refused_before_any_work():
    from jobs._cli import ConfigError, parse_config
    from research.config import LearnabilityConfig
    from research.config import LearnabilityConfig

    def parse(*argv: str):
        return parse_config(LearnabilityConfig, ["--out", "o", *argv], prog="t", description="t")

    with pytest.raises(ConfigError, match="freeze_llm would freeze a random LLM"):
        parse("--freeze-llm")
    assert parse("--freeze-llm", "--grounding.steps", "10").freeze_llm
    with pytest.raises(ConfigError, match="attribute_weight=1.0 has no effect with track.steps=0"):
        parse("--track.steps", "0", "--track.attribute-weight", "1")
    assert parse("--track.attribute-weight", "0.3").track.attribute_weight == 0.3
    focus = ("--grounding.focus-kinds", "static", "--grounding.focus-kinds", "fastest", "--grounding.focus-share", "0.5")
    with pytest.raises(ConfigError, match="focus_share=0.5 / grounding.focus_steps=0 have no effect with "
                                          "grounding.steps=0"):
        parse(*focus)
    grounding = parse(*focus, "--grounding.steps", "10").grounding
    assert grounding.focus_kinds == ("static", "fastest") and grounding.focus_share == 0.5
    phased = parse(*focus, "--grounding.steps", "10", "--grounding.focus-steps", "4",
                   "--grounding.focus-share-after", "0.25", "--grounding.lr-schedule", "constant").grounding
    assert (phased.focus_steps, phased.focus_share_after, phased.lr_schedule) == (4, 0.25, "constant")
    stage1 = parse("--focus-kinds", "hides_behind", "--focus-kinds", "covers", "--focus-share", "0.3")
    assert stage1.focus_kinds == ("hides_behind", "covers") and stage1.focus_share == 0.3
    with pytest.raises(ConfigError) as info:
        parse("--focus-kinds", "behind", "--focus-share", "1.5")
    assert "unknown kinds ['behind']" in str(info.value) and "focus_share=1.5" in str(info.value)
    with pytest.raises(ConfigError, match="focus_share=0.5: needs focus_kinds"):
        parse("--focus-share", "0.5")
    assert parse("--train-keyframe", "largest_target").train_keyframe == "largest_target"
    with pytest.raises(ConfigError, match="train_keyframe='middle': must be one of \\['tda', 'largest_target'\\]"):
        parse("--train-keyframe", "middle")


def test_curve_shows_stage_g_when_the_run_has_one(tmp_path, monkeypatch):
    """The curve gets a stage-G panel (held-out accuracy in all and per kind) beside the stage-1 panels."""
    import matplotlib.figure

    from research.grounding_pretrain import SUMMARY_FILE
    from research.learnability import GROUNDING_DIR, _plot

    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: saved.append(fig))
    rows = [{"step": s, "loss": 1.0 / s, "ce_loss": 0.5 / s} for s in range(1, 4)]
    evals = [{"step": 3, "j": 0.5, "f": 0.6, "jf": 0.55}]
    _plot(str(tmp_path), rows, evals)  # no stage G: the two stage-1 panels
    (tmp_path / GROUNDING_DIR).mkdir()
    (tmp_path / GROUNDING_DIR / SUMMARY_FILE).write_text(json.dumps({"complete": True, "steps": 500, "evaluations": [
        {"step": 250, "accuracy": {"all": 0.4, "referring": 0.6, "fastest": 0.0}},
        {"step": 500, "accuracy": {"all": 0.7, "referring": 1.0, "fastest": 0.1}}]}))
    _plot(str(tmp_path), rows, evals)
    titles = [[ax.get_title() for ax in fig.axes] for fig in saved]
    assert len(titles[0]) == 2 and not any("stage G" in t for t in titles[0]), titles
    (stage_g,) = [ax for ax in saved[1].axes if ax.get_title().startswith("stage G")]
    assert sorted(line.get_label() for line in stage_g.get_lines()) == ["all", "fastest", "referring"]


@pytest.mark.slow
def test_the_learnability_script_trains_final_on_base_sam2_and_reports_an_unfinished_run(tmp_path):
    """``scripts/learnability.sh`` (the committed checkpoint's one command), its schedules cut to a few steps of
    the tiny preset: a ``--max-minutes`` stop exits 75 before the second run starts; the command again
    finishes both runs, and the final model starts from the base model's SAM2."""
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[2]
    out = tmp_path / "learn"
    tiny = _tiny_run(out, steps=2, videos_per_step=2)
    assert tiny[:2] == ["--out", str(out)]  # dropped: the script gives each run its own --out
    small = [*tiny[2:], "--image-ratio", "0",
             "--track.steps", "2", "--track.window", "4", "--track.clips-per-step", "2", "--track.warmup-steps", "1",
             "--vision.steps", "1", "--vision.videos-per-step", "1", "--vision.probe-videos", "2",
             "--grounding.steps", "2", "--grounding.videos-per-step", "2", "--grounding.heldout-videos", "2",
             "--grounding.eval-every", "2", "--grounding.focus-steps", "1", "--grounding.warmup-steps", "1"]
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu"}

    def script(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(root / "scripts" / "learnability.sh"), str(out), *small, *extra], cwd=root,
                              env=env, capture_output=True, text=True, timeout=600)

    stopped = script("--max-minutes", "0.0001")
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    assert (out / "base").is_dir() and not (out / "final").exists()
    finished = script()
    assert finished.returncode == 0, finished.stderr[-3000:]
    task = json.loads((out / "final" / "model" / "learnability.json").read_text())
    assert task["training"]["config"]["sam2_init"] == str(out / "base" / "model")
    assert task["training"]["config"]["grounding"]["focus_share_after"] == 0.5 and task["heldout"]["step"] == 2


@pytest.mark.parametrize("job", ["research.learnability"])
def test_help_lists_every_setting(job, capsys):
    """argparse formats help strings with %: a bare % in a field's help breaks --help of the whole job."""
    assert_help_lists_every_setting(job, capsys)
