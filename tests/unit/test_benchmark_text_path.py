"""The text-path host benchmark runs and compares like with like."""
from __future__ import annotations


def test_text_path_host_benchmark_runs_and_checks_equal_outputs(capsys):
    from benchmarks.text_path_host import main

    assert main(["--preset", "tiny", "--clips", "3", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "tokenise" in out and "visual" in out and "outputs equal" in out
