"""Arrow planning (pipelines.inference.planning) against the per-row reference, and compaction (pipelines.io.compaction):
rows kept exactly, files sorted with statistics, resume over compacted and fresh parts. No Ray."""
from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.per_row_reference import done_pairs, plan_work
from pipelines.io.compaction import compact_output, finish_compaction
from pipelines.inference.run import records_from_manifest
from pipelines.inference.manifest import records_to_manifest
from pipelines.inference.planning import manifest_items, plan_manifest
from pipelines.inference.video_io import item_from_json
from pipelines.io.writers import list_parts
from tests.synthetic_output import all_rows, make_output
from vrshq.data import ExpressionRecord, VideoRecord

RUN = {"run_id": "r1", "model": "tiny", "code_version": "c"}


def _video(i: int, exps: int = 3) -> VideoRecord:
    return VideoRecord(dataset="revos", split="valid", video_id=f"v{i:04d}", frame_names=("00000", "00001"),
                       frames_uri=f"/data/{i}", video_uri=None, height=4, width=4, mask_dict_uri=None,
                       foreground_uri=None, expressions=tuple(
                           ExpressionRecord(exp_id=str(e), text=f"thing {e}", obj_ids=(1,), anno_ids=(1,), type_id=0)
                           for e in range(exps)))


def _items(plan, out: str, rows_per_block: int) -> list[dict]:
    batch = {k: np.array([c[k] for c in plan.chunks]) for k in ("path", "row_group", "first_row")}
    blocks = list(manifest_items(batch, manifest=plan.manifest, pending_rows=plan.pending_rows,
                                 rows_per_block=rows_per_block, output=out, run_fields=RUN))
    return [row for block in blocks for row in block.to_pylist()]


@pytest.mark.parametrize("rows_per_block", [4, 1000])
def test_plan_manifest_matches_the_per_row_reference(tmp_path, rows_per_block):
    table = records_to_manifest([_video(i) for i in range(30)])
    rows = table.to_pylist()
    rows.append(dict(rows[7]))  # a duplicate (video, expression) row: its first row is used
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), manifest, row_group_size=25)
    out = tmp_path / "out"
    make_output(str(out), videos=4, exps=2, per_file=2, orphan=False)  # v0000..v0003, expressions 0 and 1 done

    plan = plan_manifest(str(manifest), str(out), max_videos=20)
    records, errors = records_from_manifest(pa.Table.from_pylist(rows, schema=table.schema))
    want = plan_work(records, done=done_pairs(str(out)), max_videos=20)
    assert (plan.pairs_total, plan.pairs_done, plan.pairs_pending, plan.videos_pending) == (
        want.pairs_total, want.pairs_done, want.pairs_pending, len(want.items))
    assert plan.duplicates.to_pylist() == [{k: rows[7][k] for k in ("dataset", "split", "video_id", "exp_id")}]
    assert len(errors) == 1 and plan.clustered
    got = _items(plan, str(out), rows_per_block)
    # Every pending pair in exactly one item; a video split by a row-group boundary may give two items.
    pairs = sorted((r["video_id"], e.exp_id) for r in got for e in item_from_json(r["item_json"]).expressions)
    want_pairs = sorted((i["video_id"], e.exp_id)
                        for i in want.items for e in item_from_json(i["item_json"]).expressions)
    assert pairs == want_pairs
    assert len(got) <= len(want.items) + len(plan.chunks) - 1
    if rows_per_block == 1000:
        assert len(plan.chunks) > 1


def test_an_in_memory_manifest_plans_like_a_file(tmp_path):
    import io

    sink = io.BytesIO()
    pq.write_table(records_to_manifest([_video(i) for i in range(5)]), sink, row_group_size=4)
    pq.write_table(records_to_manifest([_video(i) for i in range(5)]), tmp_path / "m.parquet", row_group_size=4)
    out = tmp_path / "out"
    make_output(str(out), videos=2, exps=3, per_file=2, orphan=False)
    from_bytes = plan_manifest(sink.getvalue(), str(out))
    from_file = plan_manifest(str(tmp_path / "m.parquet"), str(out))
    assert (from_bytes.pairs_pending, from_bytes.videos_pending) == (from_file.pairs_pending, 3)
    batch = {k: np.array([c[k] for c in from_bytes.chunks]) for k in ("path", "row_group", "first_row")}
    got = [row for block in manifest_items(batch, manifest=from_bytes.manifest, manifest_data=from_bytes.data,
                                           pending_rows=from_bytes.pending_rows, rows_per_block=3, output=str(out),
                                           run_fields=RUN) for row in block.to_pylist()]
    assert sorted(r["video_id"] for r in got) == sorted(r["video_id"] for r in _items(from_file, str(out), 3))


def test_unclustered_manifest_is_planned_correctly(tmp_path):
    table = records_to_manifest([_video(i) for i in range(6)])
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    pq.write_table(shuffled, tmp_path / "m.parquet")
    plan = plan_manifest(str(tmp_path / "m.parquet"), str(tmp_path / "out"))
    assert not plan.clustered and plan.pairs_pending == 18 and plan.videos_pending == 6
    got = _items(plan, str(tmp_path / "out"), rows_per_block=5)
    pairs = sorted((r["video_id"], e.exp_id) for r in got for e in item_from_json(r["item_json"]).expressions)
    assert pairs == sorted((f"v{i:04d}", str(e)) for i in range(6) for e in range(3))


def test_a_bad_manifest_names_the_file(tmp_path):
    from pipelines.inference.planning import ManifestPlanError

    pq.write_table(pa.table({"video_id": ["a"]}), tmp_path / "m.parquet")
    with pytest.raises(ManifestPlanError, match="missing columns"):
        plan_manifest(str(tmp_path / "m.parquet"), str(tmp_path / "out"))
    (tmp_path / "n.parquet").write_bytes(b"not parquet")
    with pytest.raises(ManifestPlanError, match="n.parquet"):
        plan_manifest(str(tmp_path / "n.parquet"), str(tmp_path / "out"))


def test_compaction_keeps_every_row_and_sorts_with_statistics(tmp_path):
    out = str(tmp_path / "out")
    make_output(out, videos=40, per_file=2)
    make_output(out, videos=4, per_file=2, dataset="mevis", split="valid_u", orphan=False, seed=1)
    keys_before = done_pairs(out)
    want = all_rows(out)

    results = compact_output(out, target_bytes=3000, row_group_rows=50)
    assert {(r.dataset, r.split) for r in results} == {("revos", "valid"), ("mevis", "valid_u")}
    assert all_rows(out) == want
    assert done_pairs(out) == keys_before
    assert not any(p.is_file() for p in (tmp_path / "out" / "_compact").rglob("*"))
    masks = [p for p in list_parts(out, "masks") if p.dataset == "revos"]
    assert [p.batch_id for p in masks if not p.batch_id.startswith("compact-")] == ["orphan"]  # left to infer
    masks = [p for p in masks if p.batch_id != "orphan"]
    assert len(masks) > 1
    previous_max = ""
    for part in sorted(masks, key=lambda p: p.batch_id):
        meta = pq.ParquetFile(part.path).metadata
        assert [c.column_index for c in meta.row_group(0).sorting_columns] == [0, 1, 2]  # video_id, exp_id, frame_index
        for g in range(meta.num_row_groups):
            stats = meta.row_group(g).column(0).statistics
            assert stats.has_min_max and stats.min >= previous_max  # row groups in video order, ranges disjoint-ish
            previous_max = stats.max
    table = pq.read_table(masks[0].path)
    assert table.select(["video_id", "exp_id", "frame_index"]).to_pylist() == sorted(
        table.select(["video_id", "exp_id", "frame_index"]).to_pylist(), key=lambda r: tuple(r.values()))

    # A second run has nothing to do; new fresh parts are merged with the undersized compacted files.
    assert all(r.skipped for r in compact_output(out, target_bytes=3000, row_group_rows=50))
    make_output(out, videos=6, per_file=3, first=100, orphan=False, seed=2)
    want = all_rows(out)
    compact_output(out, target_bytes=3000, row_group_rows=50)
    assert all_rows(out) == want


def test_resume_reads_compacted_and_fresh_parts(tmp_path):
    out = str(tmp_path / "out")
    make_output(out, videos=10, exps=3, per_file=2, orphan=False)
    compact_output(out, target_bytes=10**6)
    make_output(out, videos=4, exps=3, per_file=2, first=10, orphan=False, seed=3)  # fresh parts after compaction
    assert len({p.batch_id[:8] for p in list_parts(out, "scores")}) == 2  # compacted and fresh parts
    manifest = tmp_path / "m.parquet"
    pq.write_table(records_to_manifest([_video(i) for i in range(16)]), manifest)
    plan = plan_manifest(str(manifest), out)
    assert (plan.pairs_done, plan.pairs_pending, plan.videos_pending) == (14 * 3, 2 * 3, 2)


def test_finish_compaction_rolls_an_uncommitted_journal_back(tmp_path):
    out = str(tmp_path / "out")
    make_output(out, videos=6, per_file=2, orphan=False)
    want = all_rows(out)
    staging = tmp_path / "out" / "_compact" / "dataset=revos" / "split=valid" / "staging" / "g1" / "masks"
    staging.mkdir(parents=True)
    shutil.copy(list_parts(out, "masks")[0].path, staging / "part-compact-g1-00000.parquet")
    (staging.parents[2] / "journal.json").write_text(
        '{"state": "planned", "generation": "g1", "dataset": "revos", "split": "valid", "staging": "%s", '
        '"sources": {}, "targets": {}}' % staging.parent)
    assert finish_compaction(out) == 0
    assert all_rows(out) == want and not any(p.is_file() for p in (tmp_path / "out" / "_compact").rglob("*"))


def test_compact_cli_refuses_a_locked_output_and_a_missing_one(tmp_path):
    from jobs.compact import main
    from pipelines.io.output_lock import OutputLock

    out = str(tmp_path / "out")
    make_output(out, videos=4, per_file=2, orphan=False)
    want = all_rows(out)
    with OutputLock(out, run_id="live-infer-run"):
        assert main(["--out", out]) == 3
    assert all_rows(out) == want and len(list_parts(out, "scores")) == 2
    assert main(["--out", str(tmp_path / "nothing")]) == 2
    assert main(["--out", out]) == 0 and len(list_parts(out, "scores")) == 1 and all_rows(out) == want


def test_actor_pool_bounds_and_block_size_are_checked():
    from pipelines.inference.config import ComputeConfig

    assert ComputeConfig(num_actors=2, max_actors=8).max_actors == 8
    for bad in ({"num_actors": 4, "max_actors": 2}, {"max_actors": 1.5}, {"manifest_rows_per_block": 0}):
        with pytest.raises(ValueError, match="max_actors|manifest_rows_per_block"):
            ComputeConfig(**bad)
