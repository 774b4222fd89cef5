"""Small tensors only: one torch thread avoids OpenMP oversubscription on shared CI machines."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):  # the shared fixture in tests/conftest.py
    yield
