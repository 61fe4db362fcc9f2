"""jobs.export: server zip layouts, never clobbering, and the zip -> evaluate round trip."""
from __future__ import annotations

import json
import logging
import zipfile

import numpy as np
import pytest

from jobs.evaluate import main as evaluate_main
from jobs.export import main
from pipelines.evaluation.export import export_zip
from pipelines.evaluation.png_masks import decode_png_mask
from pipelines.io.table_io import read_table
from pipelines.io.writers import write_batch
from schemas import MASKS_SCHEMA, SCORES_SCHEMA
from tests.pipelines.test_scoring_fixtures import make_dataset, masks_table, perturbed_predictions

METRICS = ("j", "f", "jf", "accuracy", "robustness")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    records = make_dataset(root / "ds", num_videos=2)
    predictions = perturbed_predictions(records, seed=5)
    write_batch(str(root / "run"), {"masks": masks_table(records, predictions)}, batch_id="p0")
    return root, records, predictions


@pytest.mark.parametrize("layout, prefix", [("mevis", ""), ("refytvos", "Annotations/")])
def test_zip_layout_holds_every_mask(setup, tmp_path, layout, prefix):
    root, records, predictions = setup
    out = tmp_path / "sub.zip"
    assert main(["--masks", str(root / "run"), "--out", str(out), "--layout", layout,
                 "--dataset.root", str(root / "ds")]) == 0
    with zipfile.ZipFile(out) as archive:
        names = set(archive.namelist())
        expected = {f"{prefix}{v.video_id}/{e.exp_id}/{f}.png" for v in records for e in v.expressions
                    for f in v.frame_names}
        assert names == expected
        video = records[1]
        member = f"{prefix}{video.video_id}/{video.expressions[0].exp_id}/{video.frame_names[3]}.png"
        mask = decode_png_mask(archive.read(member))
    assert np.array_equal(mask, predictions[video.video_id][video.expressions[0].exp_id][3])
    assert not list(tmp_path.glob("*.partial-*"))  # the temporary file was moved into place


def test_never_overwrites_without_asking(setup, tmp_path, caplog):
    root, _, _ = setup
    out = tmp_path / "mine.zip"
    out.write_bytes(b"the user's file")
    with caplog.at_level(logging.ERROR):
        assert main(["--masks", str(root / "run"), "--out", str(out)]) == 2
    assert "exists; pass --overwrite" in caplog.text
    assert out.read_bytes() == b"the user's file"
    with pytest.raises(FileExistsError):
        export_zip(str(root / "run" / "masks"), str(out), layout="mevis")
    assert main(["--masks", str(root / "run"), "--out", str(out), "--overwrite"]) == 0
    assert zipfile.is_zipfile(out)


def test_incomplete_masks_exit_one_and_list_what_is_missing(setup, tmp_path, caplog):
    root, records, predictions = setup
    partial = {records[0].video_id: dict(list(predictions[records[0].video_id].items())[1:])}
    write_batch(str(tmp_path), {"masks": masks_table(records, partial)}, batch_id="p0")
    with caplog.at_level(logging.ERROR):
        assert main(["--masks", str(tmp_path / "masks"), "--out", str(tmp_path / "s.zip"),
                     "--dataset.root", str(root / "ds")]) == 1
    first_exp = records[0].expressions[0].exp_id
    assert f"expression '{first_exp}': no masks in the table" in caplog.text
    assert f"video '{records[1].video_id}': no masks in the table" in caplog.text
    assert zipfile.is_zipfile(tmp_path / "s.zip")


def test_bad_config_lists_every_problem(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        assert main(["--layout", "davis", "--out", str(tmp_path / "x.tar")]) == 2
    for text in ("masks is required", "must end with .zip", "layout='davis'"):
        assert text in caplog.text


def test_zip_round_trips_through_evaluate(setup, tmp_path):
    """Export zip -> unzip -> evaluate on PNGs gives exactly the masks table's scores."""
    root, records, _ = setup
    assert main(["--masks", str(root / "run"), "--out", str(tmp_path / "sub.zip"), "--layout", "refytvos",
                 "--png-compress-level", "1"]) == 0
    with zipfile.ZipFile(tmp_path / "sub.zip") as archive:
        archive.extractall(tmp_path / "unzipped")
    dataset = ["--dataset.root", str(root / "ds")]
    assert evaluate_main([*dataset, "--masks", str(root / "run"), "--out", str(tmp_path / "a")]) == 0
    assert evaluate_main([*dataset, "--pngs", str(tmp_path / "unzipped"), "--out", str(tmp_path / "b")]) == 0
    a, b = (read_table(str(tmp_path / x / "scores"), SCORES_SCHEMA).sort_by([("video_id", "ascending"),
                                                                           ("exp_id", "ascending")])
            for x in ("a", "b"))
    assert a.num_rows == sum(len(v.expressions) for v in records)
    for name in ("video_id", "exp_id", *METRICS):
        assert a.column(name).to_pylist() == b.column(name).to_pylist()


def test_export_and_evaluate_on_s3(setup, tmp_path, s3_server):
    """Masks table and zip on an S3-compatible server, credentials through --storage-options."""
    import fsspec

    root, records, predictions = setup
    bucket = s3_server.make_bucket()
    options = json.dumps(s3_server.storage_options)
    write_batch(f"{bucket}/run", {"masks": masks_table(records, predictions)}, batch_id="p0",
                storage_options=s3_server.storage_options)
    assert main(["--masks", f"{bucket}/run", "--out", f"{bucket}/sub/mevis.zip", "--storage-options", options]) == 0
    fs = fsspec.filesystem("s3", **s3_server.storage_options)
    local = tmp_path / "mevis.zip"
    fs.get(f"{bucket}/sub/mevis.zip", str(local))
    with zipfile.ZipFile(local) as archive:
        assert len(archive.namelist()) == sum(len(v.expressions) * v.num_frames for v in records)
    assert fs.ls(f"{bucket}/sub") == [f"{bucket[5:]}/sub/mevis.zip"]  # no temporary file left
    assert evaluate_main(["--dataset.root", str(root / "ds"), "--masks", f"{bucket}/run", "--out", f"{bucket}/run",
                          "--storage-options", options]) == 0
    scores = read_table(f"{bucket}/run/scores", SCORES_SCHEMA, storage_options=s3_server.storage_options)
    assert scores.num_rows == sum(len(v.expressions) for v in records)
