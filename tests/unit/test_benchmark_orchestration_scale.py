"""The orchestration benchmark's planning and resume measurements agree with the per-row reference.

A tiny size, through the same child processes as the benchmark: the reference (every scores part read
into Python tuples) and the product (the pair index) must count the same done and pending pairs, and
the product's second resume must read the pair index that its first one folded.
"""
from __future__ import annotations

from benchmarks.orchestration_scale import measure_plan, write_done_output, write_manifest


def test_reference_and_ours_count_the_same_pairs_with_and_without_the_index(tmp_path):
    manifest = tmp_path / "manifest.parquet"
    write_manifest(manifest, num_videos=40, num_exps=3, num_frames=4, frames_uri=str(tmp_path / "frames"))
    done = tmp_path / "done"
    assert write_done_output(done, num_videos=30, num_exps=3, videos_per_file=8) == 4
    want = {"pairs_done": 90, "pairs_pending": 30, "videos_pending": 10}
    reference = measure_plan("reference", done, manifest, 8)
    assert {k: reference[k] for k in want} == want, reference
    fresh = measure_plan("ours", done, manifest, 8)  # no index yet: reads the 4 parts and folds them
    indexed = measure_plan("ours", done, manifest, 8)
    for got in (fresh, indexed):
        assert {k: got[k] for k in want} == want, got
    assert (fresh["index_files_before"], indexed["index_files_before"]) == (0, 1)
