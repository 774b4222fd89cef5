"""The suite's hypothesis profiles (registered in tests/conftest.py): CI is deterministic."""

import os
import subprocess
from pathlib import Path

from hypothesis import settings

ROOT = Path(__file__).resolve().parents[1]


def test_ci_profile_is_derandomized_without_a_database():
    ci = settings.get_profile("ci")
    assert ci.derandomize is True and ci.database is None and ci.deadline is None
    assert 10 <= ci.max_examples <= 200


def test_the_profile_follows_the_environment():
    wanted = os.environ.get("HYPOTHESIS_PROFILE") or (
        "ci" if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes") else "dev"
    )
    assert settings._current_profile == wanted
    if wanted == "ci":
        assert settings.default.derandomize and settings.default.database is None


def test_the_example_database_is_never_committed():
    assert ".hypothesis/" in (ROOT / ".gitignore").read_text().split()
    tracked = subprocess.run(["git", "ls-files", "--", "*.hypothesis*"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode == 0:  # outside a git checkout (an sdist) there is nothing to check
        assert tracked.stdout.strip() == ""
