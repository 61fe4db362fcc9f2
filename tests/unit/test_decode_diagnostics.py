"""scripts/decode_diagnostics.py: the per-cell probe must tell encoded attributes from absent ones."""
from __future__ import annotations

import importlib.util
import pathlib

import torch

_SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "decode_diagnostics.py"


def _load():
    spec = importlib.util.spec_from_file_location("decode_diagnostics", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cell_probe_reads_encoded_attributes_and_not_absent_ones():
    diagnostics = _load()
    gen = torch.Generator().manual_seed(0)
    n = 1200
    labels = torch.stack([torch.randint(0, 5, (n,), generator=gen), torch.randint(0, 4, (n,), generator=gen),
                          torch.randint(0, 3, (n,), generator=gen)], dim=1)
    # colour and size one-hot in the features (scaled, with noise), shape absent: only noise stands for it
    colour = torch.nn.functional.one_hot(labels[:, 0], 5).float() * 3
    size = torch.nn.functional.one_hot(labels[:, 2], 3).float() * 3
    features = torch.cat([colour, size, torch.randn(n, 8, generator=gen)], dim=1)
    features = features + 0.3 * torch.randn(features.shape, generator=gen)
    with torch.no_grad():  # as a caller holding the model's features would
        accuracy = diagnostics.cell_probe_accuracy(features, labels)
    assert accuracy["colour"] > 0.95 and accuracy["size"] > 0.95
    assert accuracy["shape"] < 0.5  # three object shapes: chance is 1/3
