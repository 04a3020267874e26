"""`dockyard up` with no session id (issue 24 item 3: a typed refusal on the CLI's input,
not a rewrite of the service's message text): the same error, locally and with --server,
before any service or server is asked."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dockyard import cli
from dockyard.cli.request import SESSION_FLAG_MISSING, SessionFlagMissing, request_from_flags
from dockyard.errors import INVALID


def _flags(request_file: str | None, session: str | None) -> dict[str, object]:
    return request_from_flags(
        request_file, session, "/srv", None, "ubuntu:24.04", [], [], [], [], None, None
    )


def test_no_session_flag_and_none_in_the_file_is_a_typed_refusal(tmp_path: Path) -> None:
    with pytest.raises(SessionFlagMissing) as caught:
        _flags(None, None)
    assert (caught.value.problems, caught.value.exit_code) == ([SESSION_FLAG_MISSING], INVALID)
    named = tmp_path / "request.json"
    named.write_text(json.dumps({"sessionId": "from-file"}))
    assert _flags(str(named), None)["sessionId"] == "from-file"
    assert _flags(None, "s1")["sessionId"] == "s1"
    # A sessionId the file spells (even a wrong one) is the service's to judge.
    named.write_text(json.dumps({"sessionId": ""}))
    assert _flags(str(named), None)["sessionId"] == ""


def test_up_with_a_server_refuses_it_the_same_way_without_asking_the_server(
    tmp_path: Path,
) -> None:
    # A loopback port nobody listens on: reaching for it would fail with "did not answer".
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"HOME": str(tmp_path), "DOCKYARD_STATE_DIR": str(tmp_path / "state")}
    args = ["up", "--image", "ubuntu:24.04", "--cwd", "/srv", "--json"]
    for extra in ([], ["--server", f"http://127.0.0.1:{port}"]):
        result = CliRunner().invoke(cli.app, [*args, *extra], env=env)
        assert result.exit_code == INVALID, result.stdout
        assert json.loads(result.stdout)["error"]["problems"] == [SESSION_FLAG_MISSING]


def test_up_without_a_session_lists_the_requests_other_problems_with_it(tmp_path: Path) -> None:
    # Every problem at once (issue 26): the missing flag does not hide a bad port or backend.
    env = {"HOME": str(tmp_path), "DOCKYARD_STATE_DIR": str(tmp_path / "state")}
    args = ["up", "--image", "ubuntu:24.04", "--cwd", "/srv", "-p", "70000", "--backend", "nope"]
    result = CliRunner().invoke(cli.app, [*args, "--json"], env=env)
    assert result.exit_code == INVALID, result.stdout
    problems = json.loads(result.stdout)["error"]["problems"]
    assert problems[0] == SESSION_FLAG_MISSING
    assert any("70000" in p for p in problems[1:]), problems
    assert any("nope" in p for p in problems[1:]), problems
    assert not any("session-id-not-given" in p for p in problems), problems
