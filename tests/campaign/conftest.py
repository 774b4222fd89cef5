"""Prints the campaign's totals (cases tried / right result / clear error / anything else)."""

from _harness import CLEAR, OTHER, OUTCOMES, RIGHT


def pytest_terminal_summary(terminalreporter):
    tried = sum(OUTCOMES.values())
    if not tried:
        return
    terminalreporter.write_line(
        f"campaign: {tried} cases tried / {OUTCOMES[RIGHT]} right result / "
        f"{OUTCOMES[CLEAR]} clear error / {OUTCOMES[OTHER]} anything else"
    )


import pytest  # noqa: E402

from _state import changes, snapshot  # noqa: E402


@pytest.fixture(autouse=True)
def global_state_unchanged(request):
    """Fail any campaign case (a test taking ``case``) that leaves global state changed."""
    if "case" not in request.fixturenames:
        yield
        return
    before, counted = snapshot(), dict(OUTCOMES)
    yield
    changed = changes(before, snapshot())
    if changed:
        # The case was counted as a right result or a clear error; it is neither.
        for key in (RIGHT, CLEAR):
            if OUTCOMES[key] > counted[key]:
                OUTCOMES[key] -= 1
                OUTCOMES[OTHER] += 1
    assert not changed, f"the case changed global state: {', '.join(changed)}"
