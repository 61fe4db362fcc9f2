"""benchmarks.tracking_speed runs on CPU and compares the projected memory path with stock SAM2's."""

from __future__ import annotations

import argparse

from benchmarks import tracking_speed
from vrshq.model import projected_memory


def test_tracking_benchmark_compares_projected_with_stock_on_cpu(capsys):
    args = argparse.Namespace(device="cpu", sam2="tiny", image_size=64, precision="fp32", frames=10, objects=3,
                              repeats=1, seed=0, rows_per_call=None, profile=False)
    rows = tracking_speed.run(args)
    assert [r["variant"] for r in rows] == ["stock", "projected"]  # no cuDNN variant without CUDA
    assert all(r["best_s"] > 0 and r["first_s"] > 0 for r in rows)
    assert rows[0]["x_stock"] == 1.0 and rows[0]["max_dlogit"] == 0.0
    # float32: the projected path gives the stock masks
    assert rows[1]["share_iou_099"] == 1.0 and rows[1]["max_dlogit"] < 1e-4
    assert projected_memory.CUDNN_ROWS_PER_CALL == 4  # the benchmark restores the module default
    tracking_speed.main(["--device", "cpu", "--sam2", "tiny", "--image-size", "64", "--frames", "6", "--objects", "2",
                         "--repeats", "1"])
    out = capsys.readouterr().out
    assert "x stock" in out and "projected" in out
