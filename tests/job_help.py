"""A check shared by the job tests: ``--help`` of a job (any ``main(argv)`` on the shared parser) works."""
from __future__ import annotations

import importlib

import pytest

__all__ = ["assert_help_lists_every_setting"]


def assert_help_lists_every_setting(job: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m <job> --help`` exits 0 and prints the usage and the flags.

    argparse formats help strings with %: a bare % in a field's help breaks --help of the whole job.
    """
    with pytest.raises(SystemExit) as info:
        importlib.import_module(job).main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and "--" in out
