"""dockyard.client against a real ``dockyard serve`` on loopback (a process of its own,
SQLite key store, no engine: the sessions are the registry's records, as the service
layer writes them), the asyncio client against the app in-process, and the mapping of
every error the server's handler answers into dockyard.errors kinds.

The client does not see the key store, so only SQLite here (tests/api/test_app.py runs
both stores); tests/api/test_client_cli.py runs `dockyard --server` on the engine."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dockyard import client as api_client
from dockyard.api import errors as api_errors
from dockyard.api.app import create_app
from dockyard.api.context import Limits
from dockyard.api.store import KeyStore, default_url
from dockyard.config import ConfigError
from dockyard.contract import NAMING_CURRENT
from dockyard.errors import Conflict, DockyardError, Failed, InvalidInput, NotFound, QuotaExceeded
from dockyard.sessions import Sessions, driver, quotas, registry
from dockyard.sessions.settings import paths
from tests.api.conftest import state_env
from tests.support.server import DOCKYARD, create_key, serve

REPO = Path(__file__).resolve().parents[2]
CANARY = "canary-client-7f3a"


def record(state: Path, session: str, tenant: str | None, labels: dict[str, str]) -> None:
    """A session as the service layer registers it (its manifest file included)."""
    stack = f"{tenant or 'sessions'}.{session}"
    manifest = state / "manifests" / f"{stack}.json"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text("{}")
    registry.Registry(paths({"DOCKYARD_STATE_DIR": str(state)}).index).save(
        registry.Record(
            session_id=session,
            tenant=tenant,
            stack_name=stack,
            cwd="/srv/app",
            manifest_path=str(manifest),
            host="local",
            request={"sessionId": session, "cwd": "/srv/app", "labels": labels},
            created_at="2026-12-06T00:00:00Z",
            naming=NAMING_CURRENT,
        )
    )


@dataclass
class Served:
    """A running `dockyard serve` on loopback."""

    url: str
    env: dict[str, str]
    state: Path
    store: str
    process: subprocess.Popen[str]
    log: Path

    def key(self, *flags: str) -> str:
        return str(create_key(self.env, self.store, *flags)["key"])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from start_server(tmp_path_factory.mktemp("client"), {})


def start_server(base: Path, extra_env: dict[str, str], *args: str) -> Iterator[Served]:
    """`dockyard serve --port 0` on 127.0.0.1 with its own state; stopped afterwards."""
    env = {
        **os.environ,
        **state_env(base),
        "PYTHONPATH": str(REPO),
        "NO_PROXY": "127.0.0.1,localhost",
        **extra_env,
    }
    state = Path(env["DOCKYARD_STATE_DIR"])
    if not (state / "image.json").exists():
        (state / "image.json").write_text(json.dumps({"imageRef": "dockyard-core:test"}))
    store = default_url(state)
    with serve(env, store, base / "server.log", *args) as serving:
        yield Served(serving.url, env, state, store, serving.process, serving.log)


def _raised(call: Any) -> DockyardError:
    with pytest.raises(DockyardError) as caught:
        call()
    return caught.value


# --- Against the real server on loopback ----------------------------------------------------


def test_invalid_create_raises_invalid_input_with_every_problem_and_no_secret(
    served: Served,
) -> None:
    key = served.key("--tenant", "acme")
    request = {
        "sessionId": "bad one",
        "cwd": "relative",
        "container": {"ports": [0], "env": {"GITHUB_TOKEN": "ghp_canary1"}},
        "secrets": ["X"],
    }
    raw = httpx.post(
        f"{served.url}/api/sessions/create",
        json={**request, "secretValues": {"X": CANARY}},
        headers={"Authorization": f"Bearer {key}"},
        trust_env=False,
    )
    with api_client.Client(served.url, key) as dock:
        for reference in (True, False):
            error = _raised(lambda r=reference: dock.create(request, {"X": CANARY}, reference=r))
            assert type(error) is InvalidInput
            assert (error.exit_code, error.kind) == (2, "invalid")
            # The server's lines, every one of them, unchanged.
            assert error.problems == raw.json()["error"]["problems"]
            assert len(error.problems) == 4
            assert error.status == 422  # type: ignore[attr-defined]
            assert error.request_id  # type: ignore[attr-defined]
            assert CANARY not in repr(error.problems)
            assert "ghp_canary1" not in repr(error.problems)
            assert key not in repr(error.problems)
    assert list((served.state / "sessions").glob("*.json")) == []


def test_another_tenants_session_is_not_found_exactly_like_a_missing_one(served: Served) -> None:
    record(served.state, "web", "other", {})
    with api_client.Client(served.url, served.key("--tenant", "acme")) as acme:
        for call in (
            lambda s: acme.get(s),
            lambda s: acme.get(s, tenant="other"),  # a tenant key cannot ask for another
            lambda s: acme.refresh(s),
            lambda s: acme.destroy(s),
            lambda s: acme.modal_plan(s, "/srv/app"),
        ):
            seen, missing = _raised(lambda c=call: c("web")), _raised(lambda c=call: c("nosuch"))
            assert type(seen) is type(missing) is NotFound
            assert seen.exit_code == 4
            assert seen.problems == [p.replace("nosuch", "web") for p in missing.problems]
        assert list(acme.list()) == []
    with api_client.Client(served.url, served.key("--tenant", "other")) as other:
        assert [r["sessionId"] for r in other.list()] == ["web"]


def test_list_pages_through_everything_and_filters_by_label(served: Served) -> None:
    for i in range(7):
        record(served.state, f"p{i}", "pages", {"team": "web" if i % 2 == 0 else "data"})
    with api_client.Client(served.url, served.key("--tenant", "pages")) as dock:
        first = dock.list_page(limit=3)
        assert (first["total"], first["offset"], first["next"], len(first["items"])) == (
            7,
            0,
            3,
            3,
        )
        last = dock.list_page(limit=3, offset=6)
        assert ([r["sessionId"] for r in last["items"]], last["next"]) == (["p6"], None)
        assert [r["sessionId"] for r in dock.list(page_size=3)] == [f"p{i}" for i in range(7)]
        assert [r["sessionId"] for r in dock.list(labels={"team": "web"}, page_size=2)] == [
            "p0",
            "p2",
            "p4",
            "p6",
        ]
        assert len(list(dock.list(labels={"team": None}))) == 7
        assert list(dock.list(labels={"team": "web", "tier": None})) == []
        bad = _raised(lambda: dock.list_page(limit=0, offset=-1))
        assert type(bad) is InvalidInput
        assert sorted(p.split(":")[0] for p in bad.problems) == ["query.limit", "query.offset"]
    with api_client.Client(served.url, served.key("--admin")) as admin:
        assert len(list(admin.list("pages", page_size=4))) == 7


def test_a_missing_unknown_or_revoked_key_is_unauthorized(served: Served) -> None:
    for key in (None, "dk_nope"):
        with api_client.Client(served.url, key) as dock:
            error = _raised(lambda d=dock: d.list_page())
            assert type(error) is api_client.Unauthorized
            assert isinstance(error, Failed)
            assert (error.exit_code, error.status) == (1, 401)  # type: ignore[attr-defined]
            assert "dk_nope" not in repr(error.problems)


def test_env_settings_and_an_unreachable_server(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(api_client.SERVER_VARIABLE, served.url)
    monkeypatch.setenv(api_client.KEY_VARIABLE, served.key("--tenant", "envs"))
    with api_client.Client() as dock:
        assert dock.list_page()["total"] == 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    with api_client.Client(f"http://127.0.0.1:{closed}", "dk_x", timeout=5) as gone:
        error = _raised(gone.list_page)
    assert type(error) is Failed
    assert error.exit_code == 1
    assert f"http://127.0.0.1:{closed}" in error.problems[0]
    assert "did not answer" in error.problems[0]


def test_bad_settings_are_refused_with_every_problem_and_no_key_echoed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(api_client.SERVER_VARIABLE, raising=False)
    monkeypatch.delenv(api_client.KEY_VARIABLE, raising=False)
    missing = _raised(api_client.Client)
    assert type(missing) is InvalidInput
    assert missing.problems[0].startswith("server: missing")
    both = _raised(lambda: api_client.Client("ftp://x", "dk_secret value"))
    assert [p.split(":")[0] for p in both.problems] == ["server", "api key"]
    assert "dk_secret" not in repr(both.problems)
    creds = _raised(lambda: api_client.Client("https://u:pw@host.example"))
    assert "credentials" in creds.problems[0]
    assert "pw" not in creds.problems[0].split("(")[0]


def test_a_session_id_that_is_not_one_segment_is_refused_before_any_request() -> None:
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={})

    with api_client.Client("http://api", "k", transport=httpx.MockTransport(answer)) as dock:
        for bad in ("../keys", "a/b", "..", "x%2F..", "a?b", ""):
            for call in (dock.get, dock.refresh, dock.destroy):
                error = _raised(lambda c=call, b=bad: c(b))
                assert type(error) is InvalidInput, (bad, call)
    assert sent == []


# --- Every error the server's handler answers, mapped ----------------------------------------


SERVER_ERRORS: list[tuple[DockyardError, type[DockyardError], int]] = [
    (ConfigError("s1", ["request.cwd: not absolute", "request.sessionId: bad"]), InvalidInput, 2),
    (api_errors.TooLarge("request: the body is over 10 bytes"), api_client.TooLarge, 2),
    (registry.SessionNotFound("no session 'x'"), NotFound, 4),
    (quotas.QuotaError("quota: tenant acme allows environments 1"), QuotaExceeded, 3),
    (api_errors.RateLimited("key k passed its rate", 2.4), api_client.RateLimited, 1),
    (registry.NamesTaken("stack acme.s1 is taken"), Conflict, 1),
    (api_errors.Unauthorized("the API key is unknown or revoked"), api_client.Unauthorized, 1),
    (driver.DriverError("create of acme.s1 failed: engine said no"), Failed, 1),
]


@pytest.mark.parametrize(
    ("raised", "expected", "code"), SERVER_ERRORS, ids=[type(e[0]).__name__ for e in SERVER_ERRORS]
)
def test_each_server_error_becomes_its_kind_with_the_servers_lines(
    raised: DockyardError, expected: type[DockyardError], code: int
) -> None:
    scope = {"dockyard": {"request_id": "rid-1"}}
    answer = api_errors.respond(raised, scope)  # the server's own error response

    def reply(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            answer.status_code, headers=dict(answer.headers), content=bytes(answer.body)
        )

    with api_client.Client("http://api", "k", transport=httpx.MockTransport(reply)) as dock:
        error = _raised(lambda: dock.create({"sessionId": "s1", "cwd": "/srv"}))
    assert type(error) is expected
    assert error.problems == raised.problems
    assert (error.exit_code, error.kind) == (code, raised.kind)
    assert error.request_id == "rid-1"  # type: ignore[attr-defined]
    assert error.status == raised.http_status  # type: ignore[attr-defined]
    if isinstance(error, api_client.RateLimited):
        assert isinstance(error, QuotaExceeded)
        assert error.retry_after == 2


def test_an_answer_that_is_not_dockyards_names_the_status_never_the_body() -> None:
    def proxy(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html>upstream secret-ish page</html>")

    with api_client.Client("http://api", "k", transport=httpx.MockTransport(proxy)) as dock:
        error = _raised(lambda: dock.get("s1", tenant="acme"))
    assert type(error) is Failed
    assert error.problems == [
        "GET http://api/api/sessions/s1: HTTP 502 Bad Gateway without a dockyard error object "
        "(check that the server URL points at `dockyard serve`)"
    ]


# --- The asyncio client, in-process -----------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def in_process(tmp_path: Path) -> AsyncIterator[tuple[httpx.ASGITransport, KeyStore, Path]]:
    env = state_env(tmp_path)
    where = paths(env)
    store = KeyStore(default_url(where.state))
    sessions = Sessions(where, driver.load(where, "dockyard.sessions.driver:PulumiDriver"))
    app = create_app(sessions, store, Limits(rate=0.01, burst=4))
    try:
        yield httpx.ASGITransport(app=app, raise_app_exceptions=False), store, where.state
    finally:
        store.close()


@pytest.mark.anyio
async def test_the_async_client_pages_scopes_and_maps_errors_like_the_blocking_one(
    in_process: tuple[httpx.ASGITransport, KeyStore, Path],
) -> None:
    transport, store, state = in_process
    for i in range(3):
        record(state, f"a{i}", "acme", {"team": "web"})
    record(state, "hidden", "other", {})
    key = store.create("acme").key
    async with api_client.AsyncClient("http://api", key, transport=transport) as dock:
        rows = [r["sessionId"] async for r in dock.list(labels={"team": "web"}, page_size=2)]
        assert rows == ["a0", "a1", "a2"]  # two pages: two requests of the four allowed
        with pytest.raises(NotFound) as hidden:
            await dock.get("hidden")
        assert hidden.value.problems[0].startswith("no session 'hidden'")
        assert (await dock.list_page(labels={"team": None}))["total"] == 3  # the fourth
        # The fifth request passes the key's burst of four.
        with pytest.raises(QuotaExceeded) as limited:
            await dock.list_page()
    assert type(limited.value) is api_client.RateLimited
    assert limited.value.retry_after >= 1
    assert limited.value.exit_code == 1


def test_up_through_the_server_sends_the_secret_values_this_shell_holds(served: Served) -> None:
    """`dockyard up --secret NAME --server URL`: the value of $NAME here goes in the body
    (the server would otherwise look in its own environment), and is never printed."""
    env = {
        **served.env,
        api_client.KEY_VARIABLE: served.key("--tenant", "acme"),
        "DOCKYARD_SERVER": served.url,
    }
    argv = [str(DOCKYARD), "up", "-s", "s1", "--cwd", "/srv/app", "-p", "0", "--secret", "MY_TOKEN"]
    answers = {}
    for held in (None, CANARY):
        shell = {k: v for k, v in env.items() if k != "MY_TOKEN"}
        if held:
            shell["MY_TOKEN"] = held
        result = subprocess.run(
            [*argv, "--json"], env=shell, capture_output=True, text=True, check=False, timeout=120
        )
        assert result.returncode == 2, result.stderr
        answers[held] = json.loads(result.stdout)["error"]["problems"]
        assert CANARY not in result.stdout + result.stderr
    assert [p.split(":")[0] for p in answers[None]] == [
        "request.container.ports[0]",
        "request.secrets[0]",
    ]
    assert [p.split(":")[0] for p in answers[CANARY]] == ["request.container.ports[0]"]
