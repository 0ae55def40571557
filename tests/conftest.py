"""Shared pytest fixtures (each area keeps its fixtures in its own conftest_<area>.py)."""
from pathlib import Path

import pytest

from tests.conftest_lm import lm_text, tiny_lm, tiny_lstm  # noqa: F401

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA
