"""located.verify: the engine's container and labels checked before a host tool acts."""

from __future__ import annotations

import pytest

from dockyard.sessions.located import ManifestMismatch, verify
from dockyard.sessions.registry import Record
from tests.unit.test_instant_sessions import FakeClient, FakeContainer

RECORD = Record("s1", "acme", "acme-s1", "/w", "/w/manifest.json", "local", {}, "now")


def test_a_missing_and_a_foreign_container_are_manifest_mismatches() -> None:
    with pytest.raises(ManifestMismatch, match=r"its container .* is not on its engine \(local\)"):
        verify(RECORD, {}, FakeClient({}))
    container = FakeContainer("running", session="s2")
    container.id = "c1"  # type: ignore[attr-defined]
    foreign = FakeClient({RECORD.environment_id: container})
    with pytest.raises(ManifestMismatch, match="is not labelled as this session's"):
        verify(RECORD, {"sessionId": "s1"}, foreign)
