"""Shared test fixtures: the reference vectors copied from the official code."""

import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

DATA_DIR = pathlib.Path(__file__).parent / "data"
# tools/pytorch_reference.py (the official code's network and iterations in
# PyTorch) is shared by the benchmark and the comparison tests.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tools"))


@pytest.fixture(scope="session")
def ref():
    """Test vectors computed by the official PyTorch ADVENT code (NCHW)."""
    with np.load(DATA_DIR / "advent_vectors.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def ref_discriminator():
    """Discriminator weights (OIHW) used for `b_D_out_on_a`."""
    with np.load(DATA_DIR / "advent_discriminator.npz") as data:
        return {k: data[k] for k in data.files}
