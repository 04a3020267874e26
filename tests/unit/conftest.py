"""Unit-test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def audit_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Host scripts run in-process append to the audit trail: into the test's own file,
    never the machine's /var/log/dockyard/audit.jsonl."""
    path = tmp_path / "audit.jsonl"
    monkeypatch.setenv("DOCKYARD_AUDIT_LOG", str(path))
    return path
