"""Fixtures of the GPU suite (``bash scripts/gpu_tests.sh``); every module here sets ``pytestmark = pytest.mark.gpu``,
so CPU runs skip them by that marker (``tests/conftest.py``)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture
def cuda() -> torch.device:
    return torch.device("cuda")


@pytest.fixture
def exact_float32():
    """Float32 matrix products without TF32 (the float32 agreement checks), restored after."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
