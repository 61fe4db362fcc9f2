"""jobs.evaluate: masks table and PNG folder give the same scores, equal to vrshq.metrics."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import pytest

from jobs.evaluate import main
from pipelines.io.table_io import read_table
from pipelines.io.writers import write_batch
from schemas import ERRORS_SCHEMA, MASKS_SCHEMA, SCORES_SCHEMA
from tests.pipelines.test_scoring_fixtures import (
    expected_scores,
    make_dataset,
    masks_table,
    perturbed_predictions,
    write_pngs,
)
from tests.ray_cluster import ray_head  # noqa: F401 - the session's shared local Ray head (fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
METRICS = ("j", "f", "jf", "accuracy", "robustness")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Dataset, predictions with one expression and one whole video missing, as table and PNGs."""
    root = tmp_path_factory.mktemp("evaluate")
    records = make_dataset(root / "ds")
    predictions = perturbed_predictions(records, seed=3)
    missing_exp = (records[1].video_id, records[1].expressions[2].exp_id)
    del predictions[missing_exp[0]][missing_exp[1]]
    missing_video = records[2].video_id
    del predictions[missing_video]
    write_batch(str(root / "run"), {"masks": masks_table(records, predictions)}, batch_id="p0")
    write_pngs(root / "other" / "Annotations", records, predictions)
    return {"root": root, "records": records, "predictions": predictions, "missing_exp": missing_exp,
            "missing_video": missing_video, "expected": expected_scores(records, predictions)}


def _scores(out) -> dict:
    table = read_table(str(out / "scores"), SCORES_SCHEMA)
    return {(r["video_id"], r["exp_id"]): r for r in table.to_pylist()}


def _errors(out) -> list[dict]:
    return read_table(str(out / "errors"), ERRORS_SCHEMA).to_pylist()


def _check(setup, out):
    scores = _scores(out)
    expected = setup["expected"]
    assert set(scores) == set(expected)
    for key, ref in expected.items():
        for name in METRICS:
            assert scores[key][name] == getattr(ref, name), (key, name)
    errors = _errors(out)
    missing = {(e["video_id"], e["exp_id"]) for e in errors}
    video = next(v for v in setup["records"] if v.video_id == setup["missing_video"])
    assert missing == {setup["missing_exp"]} | {(video.video_id, e.exp_id) for e in video.expressions}
    assert {e["error_type"] for e in errors} == {"MissingPredictionError"}
    return scores


def test_table_and_pngs_give_the_same_scores(setup, capsys):
    root = setup["root"]
    dataset = ["--dataset.root", str(root / "ds"), "--dataset.split", "valid"]
    assert main([*dataset, "--masks", str(root / "run"), "--out", str(root / "run"), "--progress-every", "1"]) == 1
    from_table = _check(setup, root / "run")
    assert {r["model"] for r in from_table.values()} == {"test-model"}  # provenance from the masks
    printed = capsys.readouterr().out
    assert "expressions scored" in printed and "overall" in printed
    assert main([*dataset, "--pngs", str(root / "other"), "--out", str(root / "other_eval")]) == 1
    from_pngs = _check(setup, root / "other_eval")
    for key, row in from_table.items():
        assert {m: row[m] for m in METRICS} == {m: from_pngs[key][m] for m in METRICS}
    assert {r["model"] for r in from_pngs.values()} == {"external"}
    assert (root / "run" / "evaluate-revos-valid.json").exists()


def test_refuses_to_overwrite_then_overwrites(setup, tmp_path, caplog):
    root = setup["root"]
    args = ["--dataset.root", str(root / "ds"), "--masks", str(root / "run"), "--out", str(tmp_path)]
    assert main(args) == 1
    first = sorted(p.name for p in (tmp_path / "scores").rglob("*.parquet"))
    with caplog.at_level(logging.ERROR):
        assert main(args) == 2
    assert "already has scores" in caplog.text and "from an earlier evaluate" in caplog.text
    assert sorted(p.name for p in (tmp_path / "scores").rglob("*.parquet")) == first  # untouched
    assert main([*args, "--overwrite"]) == 1
    assert len(list((tmp_path / "scores").rglob("*.parquet"))) == 1
    assert len(_scores(tmp_path)) == len(setup["expected"])
    assert first[0].startswith("part-evaluate-")
    # files of an earlier version of evaluate ("evaluate-<run>-<n>.parquet") count as evaluate's own
    (part,) = (tmp_path / "scores").rglob("*.parquet")
    part.rename(part.with_name("evaluate-old-00000.parquet"))
    with caplog.at_level(logging.ERROR):
        assert main(args) == 2
    assert main([*args, "--overwrite"]) == 1
    assert [p.name.startswith("part-evaluate-") for p in (tmp_path / "scores").rglob("*.parquet")] == [True]


def test_never_mixes_with_or_deletes_other_jobs_scores(setup, tmp_path, caplog):
    """Scores written by jobs.infer under --out are neither joined nor deleted, even with --overwrite."""
    from tests.pipelines.test_scoring_fixtures import RUN

    root = setup["root"]
    video = setup["records"][0]
    row = {"dataset": "revos", "split": "valid", "video_id": video.video_id, "exp_id": "0", "expression": "x",
           "type_id": 0, "expression_type": "referring", "num_frames": 5, "num_objects": 1, "j": 1.0, "f": 1.0,
           "jf": 1.0, "accuracy": 1.0, "robustness": None, "keyframe_index": 0, "mean_target_area": 0.1,
           "seconds": 1.0, **RUN}
    import pyarrow as pa

    write_batch(str(tmp_path), {"scores": pa.Table.from_pylist([row], schema=SCORES_SCHEMA)}, batch_id="infer0")
    written = [str(p) for p in (tmp_path / "scores").rglob("*.parquet")]
    assert [p.rsplit("/", 1)[-1] for p in written] == ["part-infer0.parquet"]
    for extra in ([], ["--overwrite"]):
        with caplog.at_level(logging.ERROR):
            assert main(["--dataset.root", str(root / "ds"), "--masks", str(root / "run"), "--out", str(tmp_path),
                         *extra]) == 2
        assert "written by another job (e.g. part-infer0.parquet" in caplog.text
    assert [str(p) for p in (tmp_path / "scores").rglob("*.parquet")] == written


def test_bad_config_lists_every_problem(setup, tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        assert main(["--engine", "spark", "--concurrency", "0", "--pngs", str(tmp_path / "nope"),
                     "--masks", "x", "bogus=1"]) == 2
    for text in ("unknown key bogus", "dataset.root is required", "out is required",
                 "exactly one of masks", "engine='spark'", "concurrency=0"):
        assert text in caplog.text
    assert not any(tmp_path.iterdir())


def test_split_without_ground_truth_fails_fast(setup, tmp_path, caplog):
    shutil.copytree(setup["root"] / "ds", tmp_path / "ds")
    (tmp_path / "ds" / "mask_dict.json").unlink()
    with caplog.at_level(logging.ERROR):
        assert main(["--dataset.root", str(tmp_path / "ds"), "--masks", str(setup["root"] / "run"),
                     "--out", str(tmp_path / "out")]) == 2
    assert "has no ground truth" in caplog.text and "jobs.export" in caplog.text
    assert not (tmp_path / "out").exists()


def test_complete_predictions_exit_zero(setup, tmp_path):
    records = setup["records"][:1]
    predictions = perturbed_predictions(records)
    write_batch(str(tmp_path), {"masks": masks_table(records, predictions)}, batch_id="p0")
    # A dataset with only the first video: copy the meta with just that video.
    import json

    shutil.copytree(setup["root"] / "ds", tmp_path / "ds")
    meta_path = tmp_path / "ds" / "meta_expressions_valid_.json"
    meta = json.loads(meta_path.read_text())
    meta["videos"] = {records[0].video_id: meta["videos"][records[0].video_id]}
    meta_path.write_text(json.dumps(meta))
    assert main(["--dataset.root", str(tmp_path / "ds"), "--masks", str(tmp_path / "masks"),
                 "--out", str(tmp_path / "out")]) == 0
    assert not (tmp_path / "out" / "errors").exists()
    assert len(_scores(tmp_path / "out")) == len(records[0].expressions)


def test_help_as_a_module():
    result = subprocess.run([sys.executable, "-m", "jobs.evaluate", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for flag in ("--dataset.root", "--masks", "--pngs", "--out", "--overwrite", "--storage-options"):
        assert flag in result.stdout


@pytest.mark.slow
def test_ray_job_submit_evaluate_export_report(setup, tmp_path, ray_head):
    """The jobs as ``ray job submit --working-dir . -- python -m jobs.<name>`` on a real local head.

    One job runs evaluate (Ray Data engine, masks table and PNGs), export and report, so the
    head and the working-dir upload are paid once; outputs are checked like the local runs.
    """
    root = setup["root"]
    data = f"--dataset.root {root / 'ds'}"
    steps = [
        f"python -m jobs.evaluate --engine ray --concurrency 1 {data} --masks {root / 'run'} --out {tmp_path / 'table'}"
        " --progress-every 1",
        f"python -m jobs.evaluate --engine ray --concurrency 1 {data} --pngs {root / 'other'} --out {tmp_path / 'png'}",
        f"python -m jobs.export --masks {root / 'run'} --out {tmp_path / 'sub.zip'} --layout refytvos",
        f"python -m jobs.report --scores {tmp_path / 'table'} --out {tmp_path / 'report'}",
    ]
    # Each step echoes its exit status: 1 for evaluate/report means error rows were written, as
    # expected here (one expression and one whole video have no masks).
    entrypoint = " ; ".join(f"{step} ; echo \"STEP $?\"" for step in steps)
    result = ray_head.submit_job(["bash", "-c", entrypoint], working_dir=ROOT, timeout=400)
    statuses = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("STEP ")]
    assert statuses == ["1", "1", "0", "1"], result.stdout[-4000:] + result.stderr[-2000:]
    for out in ("table", "png"):
        _check(setup, tmp_path / out)
    assert {r["model"] for r in _scores(tmp_path / "table").values()} == {"test-model"}
    assert "progress: 3/3 videos" in result.stdout and "evaluated 3 videos" in result.stdout  # progress + summary
    assert (tmp_path / "sub.zip").stat().st_size > 0 and (tmp_path / "report" / "report.md").exists()
