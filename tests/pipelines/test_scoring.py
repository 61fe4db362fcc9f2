"""pipelines.evaluation.scoring / png_masks / table_io: codecs, per-video scoring, masks-table streaming."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pipelines.evaluation.png_masks import (
    MissingPredictionError,
    decode_png_mask,
    encode_png_mask,
    png_mask_path,
    read_png_masks,
    resolve_png_root,
)
from pipelines.evaluation.scoring import (
    VideoScorer,
    iter_video_masks,
    masks_from_table,
    score_video_masks,
)
from pipelines.io.table_io import read_table
from pipelines.io.writers import write_batch
from schemas import MASKS_SCHEMA, SCORES_SCHEMA, SchemaValidationError
from tests.pipelines.test_scoring_fixtures import (
    RUN,
    expected_scores,
    make_dataset,
    masks_table,
    perturbed_predictions,
    write_pngs,
)
from vrshq.data import load_foreground_masks, load_mask_dict


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("scoring")
    records = make_dataset(root / "ds")
    predictions = perturbed_predictions(records)
    return root, records, predictions


def test_png_codec_accepts_official_and_other_formats():
    mask = np.zeros((4, 5), bool)
    mask[1:3, 2:4] = True
    data = encode_png_mask(mask)
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "L" and set(np.unique(np.asarray(image))) == {0, 255}
    assert np.array_equal(decode_png_mask(data), mask)
    for image in (Image.fromarray(mask.astype(np.uint8)),  # 0/1 grayscale
                  Image.fromarray(np.stack([mask * 200, mask * 0, mask * 0], -1).astype(np.uint8))):  # RGB
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        assert np.array_equal(decode_png_mask(buffer.getvalue()), mask)
    with pytest.raises(ValueError, match="x.png: not a readable PNG"):
        decode_png_mask(b"not a png", uri="x.png")


def test_png_paths_keep_slashes_of_video_ids():
    assert png_mask_path("s3://b/p/", "UVO/all/2E4T", "3", "00001") == "s3://b/p/UVO/all/2E4T/3/00001.png"
    assert png_mask_path("", "a/b", "0", "f") == "a/b/0/f.png"


def test_read_png_masks_and_missing_frames(data, tmp_path):
    _, records, predictions = data
    video = records[0]
    write_pngs(tmp_path / "Annotations", records[:1], predictions)
    root = resolve_png_root(str(tmp_path))
    assert root.endswith("/Annotations")
    masks = read_png_masks(root, video.video_id, "0", video.frame_names)
    assert np.array_equal(masks, predictions[video.video_id]["0"])
    (tmp_path / "Annotations" / video.video_id / "0" / f"{video.frame_names[2]}.png").unlink()
    with pytest.raises(MissingPredictionError, match="1 of 5 predicted mask PNG"):
        read_png_masks(root, video.video_id, "0", video.frame_names)


def test_score_video_masks_equals_metrics_and_reports_missing(data):
    root, records, predictions = data
    video = records[0]
    expected = expected_scores(records[:1], predictions)
    foreground, _ = load_foreground_masks(video)
    preds = dict(predictions[video.video_id])
    missing = video.expressions[1].exp_id
    del preds[missing]
    preds["999"] = preds[video.expressions[0].exp_id]
    result = score_video_masks(video, preds, mask_dict=load_mask_dict(video.mask_dict_uri),
                               foreground=foreground, keyframes={video.expressions[0].exp_id: 3})
    by_exp = {row["exp_id"]: row for row in result.scores}
    assert missing not in by_exp and len(by_exp) == len(video.expressions) - 1
    for exp_id, row in by_exp.items():
        ref = expected[(video.video_id, exp_id)]
        assert row["j"] == ref.j and row["f"] == ref.f and row["jf"] == ref.jf
        assert row["accuracy"] == ref.accuracy and row["robustness"] == ref.robustness
        assert 0 < row["jf"] < 1 or video.expression(exp_id).type_id == 2
    assert by_exp[video.expressions[0].exp_id]["keyframe_index"] == 3
    errors = {(e["exp_id"], e["error_type"]) for e in result.errors}
    assert errors == {(missing, "MissingPredictionError"), ("999", "ValueError")}
    # Rows (plus run fields) are valid SCORES rows.
    pa_rows = pa.Table.from_pylist([{**r, **RUN} for r in result.scores], schema=SCORES_SCHEMA)
    assert pa_rows.num_rows == len(by_exp)


def test_no_target_rows_and_missing_foreground(data):
    _, records, predictions = data
    video = records[0]
    result = score_video_masks(video, predictions[video.video_id], foreground=None)
    assert all(row["robustness"] is None for row in result.scores)  # no foreground: R missing, not a number
    no_target = [row for row in result.scores if row["type_id"] == 2]
    assert no_target and all(row["expression_type"] == "no_target" and row["num_objects"] == 0 for row in no_target)


def test_wrong_shape_is_an_error_row(data):
    _, records, predictions = data
    video = records[0]
    preds = dict(predictions[video.video_id])
    first = video.expressions[0].exp_id
    preds[first] = preds[first][:, :10]
    result = score_video_masks(video, preds)
    (error,) = result.errors
    assert error["exp_id"] == first and "ground truth has" in error["message"]


def test_masks_from_table_checks_frames(data):
    _, records, predictions = data
    video = records[0]
    table = masks_table(records[:1], predictions, keyframes={(video.video_id, "0"): 4})
    preds, keyframes = masks_from_table(table, video)
    assert np.array_equal(preds["0"], predictions[video.video_id]["0"]) and keyframes["0"] == 4
    assert keyframes["1"] is None
    drop = pa.compute.and_(pa.compute.equal(table.column("exp_id"), "1"),
                           pa.compute.equal(table.column("frame_index"), 3))
    broken = pa.concat_tables([table.filter(pa.compute.invert(drop)),
                               table.filter(pa.compute.equal(table.column("exp_id"), "2")).slice(0, 1)])
    preds, _ = masks_from_table(broken, video)
    assert isinstance(preds["1"], MissingPredictionError) and "missing frame_index [3]" in str(preds["1"])
    assert isinstance(preds["2"], ValueError) and "duplicate rows for frame_index [0]" in str(preds["2"])


def test_iter_video_masks_groups_across_files_and_batches(data, tmp_path):
    _, records, predictions = data
    table = masks_table(records, predictions)
    # Two files with interleaved videos, reversed order: grouping must not depend on file order.
    half = table.num_rows // 2
    write_batch(str(tmp_path), {"masks": table.slice(half)}, batch_id="a")
    write_batch(str(tmp_path), {"masks": table.slice(0, half)}, batch_id="b")
    other = table.set_column(table.schema.get_field_index("split"), "split", pa.array(["other"] * table.num_rows))
    write_batch(str(tmp_path), {"masks": other}, batch_id="c")
    groups = list(iter_video_masks(str(tmp_path / "masks"), dataset="revos", split="valid", rows_per_batch=7))
    assert [key[2] for key, _ in groups] == sorted(v.video_id for v in records)
    for (_, split, video_id), rows in groups:
        assert split == "valid"
        video = next(v for v in records if v.video_id == video_id)
        assert rows.num_rows == len(video.expressions) * video.num_frames
    assert sum(rows.num_rows for _, rows in iter_video_masks(str(tmp_path / "masks"))) == 2 * table.num_rows


def test_iter_video_masks_does_not_deadlock_on_fsspec_backed_reads(data, tmp_path):
    """The masks dataset reads through fsspec (Python file objects, which need the GIL). Handed the dataset,
    DuckDB 2.x started its scan with ``Scanner.to_reader``, which holds the GIL while the reads wait for it:
    such a process hung within 20-100 streams of 12 files. 150 streams run in a child process with a deadline."""
    import pathlib
    import subprocess
    import sys
    import textwrap

    _, records, predictions = data
    table = masks_table(records, predictions)
    for i in range(12):
        write_batch(str(tmp_path), {"masks": table.slice(i * table.num_rows // 12, table.num_rows // 12)},
                    batch_id=f"p{i}")
    script = textwrap.dedent(f"""
        from pipelines.evaluation.scoring import iter_video_masks
        counts = {{sum(rows.num_rows for _, rows in iter_video_masks({str(tmp_path / "masks")!r}, rows_per_batch=64))
                  for _ in range(150)}}
        print(counts)
    """)
    try:
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                                cwd=pathlib.Path(__file__).resolve().parents[2])
    except subprocess.TimeoutExpired:
        pytest.fail("iter_video_masks hung: 150 streams did not finish in 120 s")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str({12 * (table.num_rows // 12)})


def test_written_masks_are_validated_and_read_back(data, tmp_path):
    _, records, predictions = data
    table = masks_table(records[:1], predictions)
    with pytest.raises(SchemaValidationError, match="missing columns \\['score'\\]"):
        write_batch(str(tmp_path), {"masks": table.drop_columns(["score"])}, batch_id="x")
    assert write_batch(str(tmp_path), {"masks": table}, batch_id="x")["masks"] == table.num_rows
    assert (tmp_path / "masks" / "dataset=revos" / "split=valid" / "part-x.parquet").is_file()
    back = read_table(str(tmp_path / "masks"), MASKS_SCHEMA)
    assert back.sort_by([("exp_id", "ascending"), ("frame_index", "ascending")]).equals(
        table.sort_by([("exp_id", "ascending"), ("frame_index", "ascending")]))


def test_video_scorer_png_and_table_agree(data, tmp_path):
    _, records, predictions = data
    write_pngs(tmp_path, records, predictions)
    scorer = VideoScorer(records)
    table = masks_table(records, predictions)
    for video in records:
        rows = table.filter(pa.compute.equal(table.column("video_id"), video.video_id))
        assert scorer.score_table(video.video_id, rows) == scorer.score_png(video.video_id, str(tmp_path))
    missing = scorer.missing_video(records[0].video_id)
    assert not missing.scores and len(missing.errors) == len(records[0].expressions)


def test_undecodable_rle_is_an_error_not_a_crash(data):
    from pipelines.io.rle import encode_masks

    _, records, predictions = data
    video = records[0]
    table = masks_table(records[:1], predictions)
    small = encode_masks(np.ones((1, 4, 4), bool))[0]  # counts of a 4x4 mask, stored as 48x64
    is_target = pa.compute.and_(pa.compute.equal(table.column("exp_id"), "0"),
                                pa.compute.equal(table.column("frame_index"), 1))
    counts = [small if hit else c for hit, c in zip(is_target.to_pylist(), table.column("rle_counts").to_pylist())]
    table = table.set_column(table.schema.get_field_index("rle_counts"), "rle_counts", pa.array(counts, pa.binary()))
    result = VideoScorer(records).score_table(video.video_id, table)
    (error,) = result.errors
    assert error["exp_id"] == "0" and error["stage"] == "decode" and "cannot decode" in error["message"]
    assert len(result.scores) == len(video.expressions) - 1
