"""One audit writer (dockyard.host.audit_trail): the sessions layer's lines and the host
scripts' lines go through the same code, so they have the same fields in the same order,
the same time format, one lock and one rotation."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from dockyard import host
from dockyard.host import audit_trail
from dockyard.sessions import audit

MILLIS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_the_sessions_trail_and_the_host_library_write_through_one_writer() -> None:
    assert audit.append is audit_trail.append
    assert audit.now is audit_trail.now
    assert host.audit is audit_trail.audit
    assert (host.AUDIT_FIELDS, host.AUDIT_MAX_BYTES, host.AUDIT_KEEP) == (
        audit.FIELDS,
        audit.MAX_BYTES,
        audit.KEEP,
    )


def test_host_and_sessions_lines_share_fields_order_rotation_and_modes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "trail" / "audit.jsonl"
    monkeypatch.setenv("DOCKYARD_AUDIT_LOG", str(log))
    monkeypatch.setattr(audit_trail, "MAX_BYTES", 400)
    labels = {"dockyard.session": "s1", "dockyard.tenant": "t", "dockyard.stack": "t.s1"}
    for _ in range(6):
        with audit.recorded(log, "create", session="s1", tenant="t", host="local", stack="t.s1"):
            pass
        host.audit("idle-stop", actor="host:idle-monitor", labels=labels, detail="x" * 400)
    lines = [
        json.loads(line)
        for path in [log.with_name(f"{log.name}.{i}") for i in range(audit.KEEP, 0, -1)] + [log]
        if path.exists()
        for line in path.read_text().splitlines()
    ]
    assert log.with_name("audit.jsonl.1").exists()  # both writers' lines rotated as one log
    assert {e["action"] for e in lines} == {"create", "idle-stop"}
    for entry in lines:
        assert list(entry)[: len(audit.FIELDS)] == list(audit.FIELDS), entry
        assert MILLIS.fullmatch(entry["time"]), entry["time"]
        assert (entry["session"], entry["tenant"], entry["stack"]) == ("s1", "t", "t.s1")
    host_lines = [e for e in lines if e["action"] == "idle-stop"]
    assert all(len(e["detail"]) == audit_trail.DETAIL_MAX for e in host_lines)
    assert oct(os.stat(log).st_mode & 0o777) == "0o600"
    assert oct(os.stat(log.parent).st_mode & 0o777) == "0o700"
    assert {e["session"] for e in audit.read(log, session="s1")} == {"s1"}


def test_a_host_line_that_cannot_be_written_never_fails_the_action(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    host.audit("restart", actor="host:health", log=str(blocked / "audit.jsonl"))
    assert "WARNING: audit log" in capsys.readouterr().err
    with pytest.raises(FileExistsError), audit.recorded(blocked / "audit.jsonl", "create"):
        pass  # the sessions layer's trail is part of the action: its failure is reported


def test_any_writers_detail_is_capped_so_no_line_is_huge(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    audit.append(log, {"time": audit.now(), "action": "create", "detail": "x" * 3_000_000})
    (line,) = log.read_text().splitlines()
    assert json.loads(line)["detail"] == "x" * audit_trail.LINE_DETAIL_MAX
    assert len(line) < 2 * audit_trail.LINE_DETAIL_MAX


def test_a_torn_last_line_never_swallows_the_next_one(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_text('{"time": "2026-12-07T00:00:00.000Z", "action": "cre')  # a crash mid-write
    audit.append(log, {"time": audit.now(), "action": "create", "session": "s1"})
    assert [e["session"] for e in audit.read(log)] == ["s1"]
