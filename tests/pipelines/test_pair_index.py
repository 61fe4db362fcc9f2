"""The pair index of committed pairs (pipelines.io.pair_index): what resume reads instead of every scores part.

Every test compares the index's answer with the scores table read file by file (duplicates kept, so a
pair counted twice shows): after folds, kills at each step of a fold, deleted and rewritten parts,
compaction, and on S3. No Ray.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipelines.io.pair_index as pair_index
from pipelines.inference.manifest import records_to_manifest
from pipelines.inference.planning import plan_manifest
from pipelines.inference.resume import other_models
from pipelines.io.compaction import compact_output, compact_partition
from pipelines.io.pair_index import INDEX_FOLDER, KEY_COLUMNS, SEP, fold_index, read_committed
from pipelines.io.writers import list_parts, read_output, write_batch
from schemas import SCORES_SCHEMA
from tests.synthetic_output import RUN, make_output
from vrshq.data import ExpressionRecord, VideoRecord


def _want(out: str, storage_options=None) -> list[str]:
    """Every scores row's pair string, read from every scores file."""
    keys = read_output(out, "scores", columns=KEY_COLUMNS, storage_options=storage_options)
    return sorted(SEP.join(row) for row in zip(*(keys[c].to_pylist() for c in KEY_COLUMNS)))


def _got(out: str, storage_options=None, **kwargs) -> tuple[list[str], pair_index.Committed]:
    found = read_committed(out, storage_options=storage_options, **kwargs)
    return sorted(found.pairs.to_pylist()), found


def _index_files(out) -> list[str]:
    folder = out / INDEX_FOLDER
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _scores_part(out: str, pairs: list[tuple[str, str]], batch_id: str, model: str = "tiny") -> None:
    rows = [{"dataset": "revos", "split": "valid", "video_id": v, "exp_id": e, "expression": "x", "type_id": 0,
             "expression_type": "referring", "num_frames": 1, "num_objects": 1, "j": 0.5, "f": 0.5, "jf": 0.5,
             "accuracy": None, "robustness": None, "keyframe_index": 0, "mean_target_area": 0.1, "seconds": 0.0,
             **RUN, "model": model} for v, e in pairs]
    write_batch(out, {"scores": pa.Table.from_pylist(rows, schema=SCORES_SCHEMA)}, batch_id=batch_id)


def test_a_fold_covers_every_part_and_the_next_read_uses_the_index_alone(tmp_path):
    out = str(tmp_path / "out")
    assert _got(out)[0] == [] and not fold_index(out).folded  # a new output: nothing to index
    make_output(out, videos=10, exps=3, per_file=2, orphan=False)
    pairs, found = _got(out)
    assert pairs == _want(out) and len(pairs) == 30
    assert (found.parts, found.parts_read, found.index_files, found.folded) == (5, 5, 0, False)
    assert fold_index(out).folded and len(_index_files(tmp_path / "out")) == 1
    pairs, found = _got(out, fold=True)
    assert pairs == _want(out)
    assert (found.parts_read, found.index_files, found.stale_rows, found.folded) == (0, 1, 0, False)  # up to date
    assert found.pairs.to_pylist() == pairs  # one complete index file: already sorted
    # The index sits outside the tables: no table reader sees it.
    assert read_output(out, "scores").num_rows == 30 and len(list_parts(out, "scores")) == 5


def test_a_kill_between_part_writes_and_the_fold_loses_and_duplicates_nothing(tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    make_output(out, videos=6, exps=2, per_file=2, orphan=False)
    fold_index(out)
    # A run killed after writing parts, before its end-of-run fold: its parts are read directly.
    make_output(out, videos=4, exps=2, per_file=2, first=100, orphan=False, seed=1)
    pairs, found = _got(out)
    assert pairs == _want(out) and len(pairs) == 20 and (found.parts_read, found.index_files) == (2, 1)

    # Killed while the next fold writes the index: the temporary file is ignored, the old index still counts.
    real_write = pair_index.write_bytes_atomic

    def killed_while_writing(fs, path, data):
        folder, name = path.rsplit("/", 1)
        fs.pipe_file(f"{folder}/.{name}.tmp-dead", data[: len(data) // 2])  # what a kill mid-write leaves
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(pair_index, "write_bytes_atomic", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        fold_index(out)
    monkeypatch.setattr(pair_index, "write_bytes_atomic", real_write)
    pairs, found = _got(out)
    assert pairs == _want(out) and (found.parts_read, found.index_files) == (2, 1)

    # A storage error while writing the index costs nothing but the fold: the pairs read stand.
    def storage_error(fs, path, data):
        raise OSError("503 Slow Down")

    monkeypatch.setattr(pair_index, "write_bytes_atomic", storage_error)
    pairs, found = _got(out, fold=True)
    assert pairs == _want(out) and not found.folded and found.sorted
    monkeypatch.setattr(pair_index, "write_bytes_atomic", real_write)

    # Killed after the new index file is in place, before the old one is deleted: both cover the first
    # parts, whose entries are then taken from one file only.
    def killed_after_writing(fs, path, data):
        real_write(fs, path, data)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(pair_index, "write_bytes_atomic", killed_after_writing)
    with pytest.raises(KeyboardInterrupt):
        fold_index(out)
    monkeypatch.setattr(pair_index, "write_bytes_atomic", real_write)
    assert len([n for n in _index_files(tmp_path / "out") if not n.startswith(".")]) == 2
    pairs, found = _got(out)
    assert pairs == _want(out) and (found.parts_read, found.index_files, found.stale_rows) == (0, 2, 0)
    assert fold_index(out).folded  # two files become one
    pairs, found = _got(out)
    assert pairs == _want(out) and (found.parts_read, found.index_files) == (0, 1)


def test_entries_of_deleted_or_rewritten_parts_drop_out(tmp_path):
    out = str(tmp_path / "out")
    _scores_part(out, [("a", "0"), ("a", "1")], "p1")
    _scores_part(out, [("b", "0")], "p2")
    _scores_part(out, [("c", "0")], "p3")
    fold_index(out)
    folder = tmp_path / "out" / "scores" / "dataset=revos" / "split=valid"
    (folder / "part-p1.parquet").unlink()  # a user deletes a file
    size = (folder / "part-p2.parquet").stat().st_size
    _scores_part(out, [("e", "0")], "p2")  # a file rewritten under the same name, same size: its version differs
    assert (folder / "part-p2.parquet").stat().st_size == size
    pairs, found = _got(out)
    assert pairs == _want(out) == [SEP.join(("revos", "valid", v, "0")) for v in ("c", "e")]
    assert (found.parts_read, found.stale_rows) == (1, 3)
    assert fold_index(out).folded
    pairs, found = _got(out)
    assert pairs == _want(out) and (found.parts_read, found.stale_rows) == (0, 0)


def test_an_unreadable_index_file_is_replaced_and_an_emptied_output_indexes_nothing(tmp_path):
    out = str(tmp_path / "out")
    make_output(out, videos=4, exps=2, per_file=2, orphan=False)
    fold_index(out)
    (index,) = _index_files(tmp_path / "out")
    (tmp_path / "out" / INDEX_FOLDER / index).write_bytes(b"PAR1 not an index PAR1")
    pairs, found = _got(out, fold=True)
    assert pairs == _want(out) and found.parts_read == 2 and found.folded
    assert _index_files(tmp_path / "out") != [index] and len(_index_files(tmp_path / "out")) == 1
    for part in list_parts(out, "scores"):
        (tmp_path / "out" / "scores" / f"dataset={part.dataset}" / f"split={part.split}" /
         f"part-{part.batch_id}.parquet").unlink()
    pairs, found = _got(out, fold=True)
    assert pairs == [] and found.stale_rows == 8 and found.folded
    pairs, found = _got(out)
    assert pairs == [] and (found.stale_rows, found.index_files, found.parts) == (0, 1, 0)
    assert other_models(out, "x") == []


def test_compaction_keeps_the_index_correct(tmp_path):
    out = str(tmp_path / "out")
    make_output(out, videos=12, exps=3, per_file=2)
    fold_index(out)
    want = _want(out)
    compact_output(out, target_bytes=10**6)  # folds the compacted file in at the end
    pairs, found = _got(out)
    assert pairs == want and (found.parts, found.parts_read, found.index_files, found.stale_rows) == (1, 0, 1, 0)

    # Fresh parts after compaction, then a compaction that was not followed by a fold (infer finishing an
    # interrupted one): the old entries are stale, the compacted file is read like any part.
    make_output(out, videos=4, exps=3, per_file=2, first=100, orphan=False, seed=2)
    fold_index(out)
    want = _want(out)
    compact_partition(out, "revos", "valid", target_bytes=10**6)
    pairs, found = _got(out)
    assert pairs == want and found.parts_read == 1 and found.stale_rows == len(want)


def test_plan_manifest_folds_and_then_reads_the_index(tmp_path):
    videos = [VideoRecord(dataset="revos", split="valid", video_id=f"v{i:04d}", frame_names=("00000",),
                          frames_uri=f"/data/{i}", video_uri=None, height=4, width=4, mask_dict_uri=None,
                          foreground_uri=None, expressions=tuple(
                              ExpressionRecord(exp_id=str(e), text="t", obj_ids=(1,), anno_ids=(1,), type_id=0)
                              for e in range(3))) for i in range(8)]
    manifest = tmp_path / "m.parquet"
    pq.write_table(records_to_manifest(videos), manifest)
    out = str(tmp_path / "out")
    make_output(out, videos=5, exps=2, per_file=2, orphan=False)
    first = plan_manifest(str(manifest), out)  # no fold: nothing written
    assert not (tmp_path / "out" / INDEX_FOLDER).exists()
    folded = plan_manifest(str(manifest), out, fold_index=True)
    assert len(_index_files(tmp_path / "out")) == 1
    again = plan_manifest(str(manifest), out, fold_index=True)
    for plan in (first, folded, again):
        assert (plan.pairs_done, plan.pairs_pending, plan.videos_pending) == (10, 14, 8)
    assert read_committed(out).parts_read == 0


def test_the_one_model_check_reads_the_index_and_the_parts_it_misses(tmp_path):
    out = str(tmp_path / "out")
    _scores_part(out, [("a", "0")], "p1")
    fold_index(out)
    assert other_models(out, "tiny") == [] and other_models(out, "other") == ["tiny"]
    _scores_part(out, [("b", "0")], "p2", model="other")  # not folded yet
    assert other_models(out, "tiny") == ["other"]
    fold_index(out)
    assert read_committed(out, pairs=False, models=True).models == ["other", "tiny"]


def test_the_index_on_s3(s3_server):
    out = s3_server.make_bucket() + "/runs/r1"
    opts = s3_server.storage_options
    for b in range(3):
        rows = [{"dataset": "revos", "split": "valid", "video_id": f"v{b}", "exp_id": str(e), "expression": "x",
                 "type_id": 0, "expression_type": "referring", "num_frames": 1, "num_objects": 1, "j": 0.5, "f": 0.5,
                 "jf": 0.5, "accuracy": None, "robustness": None, "keyframe_index": 0, "mean_target_area": 0.1,
                 "seconds": 0.0, **RUN} for e in range(2)]
        write_batch(out, {"scores": pa.Table.from_pylist(rows, schema=SCORES_SCHEMA)}, batch_id=f"b{b}",
                    storage_options=opts)
    assert all(p.version and p.size > 0 for p in list_parts(out, "scores", storage_options=opts))  # ETags
    assert fold_index(out, storage_options=opts).folded
    pairs, found = _got(out, storage_options=opts)
    assert pairs == _want(out, opts) and len(pairs) == 6 and (found.parts_read, found.index_files) == (0, 1)
    fs = s3_server.filesystem()
    fs.rm(list_parts(out, "scores", storage_options=opts)[0].path)
    pairs, found = _got(out, storage_options=opts, fold=True)
    assert pairs == _want(out, opts) and len(pairs) == 4 and found.stale_rows == 2 and found.folded
    assert len([p for p in fs.ls(out[len("s3://"):] + "/" + INDEX_FOLDER)]) == 1
