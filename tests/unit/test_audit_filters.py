"""The audit trail's filters live in the service layer (dockyard.sessions.audit.read):
session, tenant, action, since and limit, the same for `dockyard audit` and GET /api/audit
(issue 27)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from dockyard import cli
from dockyard.errors import InvalidInput
from dockyard.sessions import audit
from dockyard.sessions.settings import paths

LINES = [
    {"time": "2026-12-06T10:00:00.000Z", "action": "create", "session": "s1", "tenant": "acme"},
    {"time": "2026-12-06T11:00:00.000Z", "action": "destroy", "session": "s1", "tenant": "acme"},
    {"time": "2026-12-06T12:00:00.000Z", "action": "create", "session": "g1", "tenant": "globex"},
    {"time": "2026-12-06T13:00:00.000Z", "action": "create", "session": "u1", "tenant": "acme"},
    {"time": "2026-12-06T14:00:00.000Z", "action": "api", "session": "u1", "tenant": "acme"},
]
NOT_AUDIT_LINES = [
    "[]",
    '"text"',
    "{not json",
    json.dumps({"action": "create", "session": "s1"}),  # no time
    json.dumps({"time": 5, "action": "create", "session": "s1"}),
    json.dumps({"time": "2026-12-06T15:00:00.000Z", "action": None, "session": "s1"}),
]


def _write(log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    # The oldest two in a rotation, the rest in the current log, with lines that are not
    # audit lines between them.
    rotated = [json.dumps(line) for line in LINES[:2]]
    log.with_name(f"{log.name}.1").write_text("\n".join(rotated) + "\n")
    current = [json.dumps(line) for line in LINES[2:]]
    log.write_text("\n".join([*NOT_AUDIT_LINES[:3], *current, *NOT_AUDIT_LINES[3:]]) + "\n")


def _pairs(entries: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["action"], e["session"]) for e in entries]


def test_read_filters_by_action_since_and_limit(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log)
    assert _pairs(audit.read(log)) == [(e["action"], e["session"]) for e in LINES]
    assert _pairs(audit.read(log, action="create")) == [
        ("create", "s1"),
        ("create", "g1"),
        ("create", "u1"),
    ]
    noon = datetime(2026, 12, 6, 12, tzinfo=UTC)
    assert _pairs(audit.read(log, since=noon)) == [
        ("create", "g1"),
        ("create", "u1"),
        ("api", "u1"),
    ]
    # Another zone is the same moment; a time without a zone is UTC.
    plus_two = noon.astimezone(timezone(timedelta(hours=2)))
    assert audit.read(log, since=plus_two) == audit.read(log, since=noon.replace(tzinfo=None))
    assert _pairs(audit.read(log, action="create", limit=2)) == [("create", "g1"), ("create", "u1")]
    assert _pairs(audit.read(log, tenant="acme", action="create", since=noon, limit=5)) == [
        ("create", "u1")
    ]
    assert _pairs(audit.read(log, session="s1", limit=1)) == [("destroy", "s1")]
    assert audit.read(log, action="nosuch") == []


def test_read_refuses_a_limit_below_one_and_a_since_that_is_no_time(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log)
    with pytest.raises(InvalidInput) as refused:
        audit.read(log, limit=0, since="yesterday")  # type: ignore[arg-type]
    assert refused.value.problems == [
        "limit: 0 is not allowed (allowed: an integer >= 1)",
        "since: 'yesterday' is not allowed (allowed: a time, e.g. 2026-12-07T00:00:00Z)",
    ]


def test_moment_reads_iso_8601_and_names_the_key_of_a_bad_one() -> None:
    assert audit.moment("2026-12-06T12:00:00Z") == datetime(2026, 12, 6, 12, tzinfo=UTC)
    assert audit.moment("2026-12-06T14:00:00+02:00") == datetime(2026, 12, 6, 12, tzinfo=UTC)
    assert audit.moment("2026-12-06T12:00") == datetime(2026, 12, 6, 12, tzinfo=UTC)
    with pytest.raises(InvalidInput) as refused:
        audit.moment("yesterday", "--since")
    assert refused.value.problems == [
        "--since: 'yesterday' is not an ISO 8601 time (allowed: e.g. 2026-12-07T00:00:00Z)"
    ]


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    env = {
        "HOME": str(tmp_path),
        "DOCKYARD_STATE_DIR": str(tmp_path / "state"),
        "DOCKYARD_CONFIG": str(tmp_path / "settings.yaml"),
        "DOCKYARD_AUDIT_LOG": str(tmp_path / "state" / "audit.jsonl"),
    }
    (tmp_path / "settings.yaml").write_text("{}\n")
    _write(paths(env).audit_log)
    return env


def _cli(env: dict[str, str], *args: str) -> tuple[int, Any]:
    result = CliRunner().invoke(cli.app, ["audit", "--json", *args], env=env)
    return result.exit_code, json.loads(result.stdout)


def test_the_cli_has_the_same_filters(home: dict[str, str]) -> None:
    code, lines = _cli(home, "--action", "create", "--since", "2026-12-06T12:00:00Z")
    assert code == 0
    assert _pairs(lines) == [("create", "g1"), ("create", "u1")]
    code, lines = _cli(home, "--tenant", "acme", "--limit", "2")
    assert (code, _pairs(lines)) == (0, [("create", "u1"), ("api", "u1")])
    code, refused = _cli(home, "--since", "yesterday")
    assert code != 0
    assert refused["error"]["problems"] == [
        "--since: 'yesterday' is not an ISO 8601 time (allowed: e.g. 2026-12-07T00:00:00Z)"
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_http_and_cli_answer_the_same_lines_for_the_same_filters(
    home: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dockyard.api.app import create_app
    from dockyard.api.store import KeyStore, default_url
    from dockyard.sessions import Sessions, driver

    for name, value in home.items():
        monkeypatch.setenv(name, value)
    where = paths(home)
    store = KeyStore(default_url(tmp_path / "keys"))
    try:
        admin = {"Authorization": f"Bearer {store.create(None, True).key}"}
        sessions = Sessions(where, driver.load(where, "dockyard.sessions.driver:PulumiDriver"))
        transport = httpx.ASGITransport(app=create_app(sessions, store))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            for query in (
                {"action": "create", "since": "2026-12-06T12:00:00Z"},
                {"tenant": "acme", "limit": 2, "action": "create"},
                {"session": "s1"},
            ):
                args = [a for k, v in query.items() for a in (f"--{k}", str(v))]
                code, lines = _cli(home, *args)
                assert code == 0
                # Read after the CLI: each request adds its own `api` line once answered.
                answer = await client.get("/api/audit", params=query, headers=admin)
                assert answer.status_code == 200, answer.text
                assert _pairs(answer.json()) == _pairs(lines), query
    finally:
        store.close()
