"""Test markers that depend on the backend of this test process (fixed per process)."""

from __future__ import annotations

import os

import pytest

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")


def slow_on(*backends: str):
    """The ``slow`` marker on ``backends`` only: for a backend-agnostic end-to-end case
    that is several times slower there (TensorFlow retraces per phase) and stays in CI
    on the other backends. Elsewhere the marker ``slow_elsewhere``, which selects nothing
    by default."""
    return pytest.mark.slow if BACKEND in backends else pytest.mark.slow_elsewhere
