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
