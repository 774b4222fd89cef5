"""Fixtures shared by every test folder, and the hypothesis profiles.

Hypothesis profiles (the README's "Tests" section documents them):

- ``ci``: chosen when the environment has ``CI=true`` (``.ci/run`` sets it). Derandomized (every
  run draws the same examples, so CI's verdict does not depend on luck), no example database,
  no deadline (a shared 2-core runner is slow at times), 50 examples where a test does not set
  its own count.
- ``dev``: the local default. Random draws on every run and the example database in
  ``.hypothesis/`` (git-ignored, never committed), so local runs keep searching and replay what
  they found.

``HYPOTHESIS_PROFILE=<name>`` picks a profile explicitly and wins over ``CI`` (e.g.
``HYPOTHESIS_PROFILE=ci`` reproduces CI's draws locally). A test's own ``@settings`` (most set
``max_examples``) wins over the profile for the settings it names.
"""

import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, max_examples=50, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)


def _profile() -> str:
    chosen = os.environ.get("HYPOTHESIS_PROFILE")
    if chosen:
        return chosen
    return "ci" if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes") else "dev"


settings.load_profile(_profile())


@pytest.fixture
def one_thread():
    """One torch thread for tests of tiny matmuls: avoids OpenMP oversubscription on a shared
    2-core machine; the caller's count is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
