"""Fixtures shared by every test folder."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread for tests of tiny matmuls: avoids OpenMP oversubscription on a shared
    2-core machine; the caller's count is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
