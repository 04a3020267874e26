"""Fixtures of the reliability suite: the figures each test measures (tests/support/figures)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import figures as reliability_figures


@pytest.fixture(scope="session")
def figures() -> dict[str, Any]:
    return reliability_figures.FIGURES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    reliability_figures.report(terminalreporter)
