"""Shared fixtures: the real reference data beside the project, skipped when absent."""

import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REFERENCE = pathlib.Path(os.environ.get(
    "ATN_REFERENCE_DIR", pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "reference"))


@pytest.fixture(scope="session")
def reference_dir() -> pathlib.Path:
    if not (REFERENCE / "megc2019" / "manifest.csv").is_file():
        pytest.skip(f"real reference data not found at {REFERENCE} (set ATN_REFERENCE_DIR)")
    return REFERENCE
