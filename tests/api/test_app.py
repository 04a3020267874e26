"""The HTTP face in-process (httpx over the ASGI transport), on SQLite and PostgreSQL key
stores: keys and principals, tenant scoping (another tenant's session is a missing one),
the error object, every validation problem at once with the CLI's lines, limits, the
catch-all 500 and the audit line of every request. Nothing here reaches an engine: the
sessions are the registry's records (the service layer's own), creates stop at
validation. tests/api/test_server_on_engine.py runs the real server on the engine."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dockyard.api.context import Limits
from dockyard.contract import NAMING_CURRENT
from dockyard.sessions import audit, registry
from tests.api.conftest import Api

pytestmark = pytest.mark.anyio
DOCKYARD = Path(sys.executable).with_name("dockyard")
REPO = Path(__file__).resolve().parents[2]


def _record(
    api: Api, session: str, tenant: str | None, labels: dict[str, str] | None = None
) -> None:
    """A session as the service layer registers it (its manifest file included)."""
    stack = f"{tenant or 'sessions'}.{session}"
    manifest_path = api.state / "manifests" / f"{stack}.json"
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text("{}")
    api.sessions.registry.save(
        registry.Record(
            session_id=session,
            tenant=tenant,
            stack_name=stack,
            cwd="/srv/app",
            manifest_path=str(manifest_path),
            host="local",
            request={"sessionId": session, "cwd": "/srv/app", "labels": labels or {}},
            created_at="2026-12-06T00:00:00Z",
            naming=NAMING_CURRENT,
        )
    )


async def test_no_key_a_wrong_key_and_a_revoked_key_answer_401_alike(api: Api) -> None:
    issued = api.store.create("acme")
    good = {"Authorization": f"Bearer {issued.key}"}
    assert (await api.client.get("/api/sessions", headers=good)).status_code == 200
    api.store.revoke(issued.info.id)
    wrong = issued.key[:-4] + ("AAAA" if not issued.key.endswith("AAAA") else "BBBB")
    answers = {}
    for name, headers in (
        ("none", {}),
        ("wrong", {"Authorization": f"Bearer {wrong}"}),
        ("revoked", good),
        ("garbage", {"Authorization": "Bearer nope"}),
    ):
        response = await api.client.get("/api/sessions", headers=headers)
        assert response.status_code == 401, (name, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        answers[name] = response.json()["error"]["problems"]
    # A key presented: one line whatever is wrong with it (no oracle for which keys exist);
    # none presented: how to send one.
    assert answers["wrong"] == answers["revoked"] == answers["garbage"]
    assert answers["none"] != answers["wrong"]
    assert "Authorization: Bearer" in answers["none"][0]
    assert issued.key not in json.dumps(answers)


async def test_keys_list_shows_ids_never_keys_and_only_admins_create(api: Api) -> None:
    admin = api.key(admin=True)
    made = await api.client.post("/api/keys", json={"tenant": "acme"}, headers=admin)
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    listed = await api.client.get("/api/keys", headers=admin)
    assert made.json()["id"] in {row["id"] for row in listed.json()}
    fields = {"id", "tenant", "admin", "createdAt", "lastUsedAt", "revokedAt"}
    assert {frozenset(row) for row in listed.json()} == {frozenset(fields)}
    assert set(made.json()) == {*fields, "key"}
    assert key not in listed.text
    assert key.split("_", 2)[2] not in listed.text
    tenant = {"Authorization": f"Bearer {key}"}
    refused = await api.client.post("/api/keys", json={"admin": True}, headers=tenant)
    assert refused.status_code == 404
    # A tenant key lists its own tenant's keys only.
    api.store.create("other")
    own = await api.client.get("/api/keys", headers=tenant)
    assert {row["tenant"] for row in own.json()} == {"acme"}
    bad = await api.client.post("/api/keys", json={"tenant": "Not Ok"}, headers=admin)
    assert bad.status_code == 422
    assert bad.json()["error"]["problems"][0].startswith("tenant: 'Not Ok' is not allowed")


async def test_another_tenants_session_answers_exactly_like_a_missing_one(api: Api) -> None:
    _record(api, "web", "other")
    acme = api.key("acme")
    for method, path, params in (
        ("GET", "/api/sessions/{}", {}),
        ("POST", "/api/sessions/{}/refresh", {}),
        ("DELETE", "/api/sessions/{}", {}),
        ("GET", "/api/cloud/providers/modal/plan", {"cwd": "/srv/app", "sessionId": "{}"}),
    ):
        answers = []
        for session in ("web", "nosuch"):
            url = path.format(session)
            query = {k: v.format(session) for k, v in params.items()}
            response = await api.client.request(method, url, params=query, headers=acme)
            answers.append((response.status_code, response.json()["error"]["problems"]))
        seen, missing = answers
        assert seen[0] == missing[0] == 404, (method, path, answers)
        assert seen[1] == [p.replace("nosuch", "web") for p in missing[1]], (method, path)
        # Asking for the other tenant by name changes nothing for a tenant's key.
        again = await api.client.request(
            method,
            path.format("web"),
            params={**{k: v.format("web") for k, v in params.items()}, "tenant": "other"},
            headers=acme,
        )
        assert again.status_code == 404
    listed = await api.client.get("/api/sessions", headers=acme)
    assert listed.json()["items"] == []
    # The other tenant's own key sees it, and an admin sees it by tenant.
    other = await api.client.get("/api/sessions", headers=api.key("other"))
    assert [r["sessionId"] for r in other.json()["items"]] == ["web"]
    admin = await api.client.get(
        "/api/sessions", params={"tenant": "other"}, headers=api.key(admin=True)
    )
    assert [r["sessionId"] for r in admin.json()["items"]] == ["web"]


async def test_list_filters_by_label_and_pages(api: Api) -> None:
    for i in range(5):
        _record(api, f"s{i}", "acme", {"team": "web" if i % 2 == 0 else "data"})
    acme = api.key("acme")
    first = (await api.client.get("/api/sessions", params={"limit": 2}, headers=acme)).json()
    assert (first["total"], first["next"], len(first["items"])) == (5, 2, 2)
    last = (
        await api.client.get("/api/sessions", params={"limit": 2, "offset": 4}, headers=acme)
    ).json()
    assert ([r["sessionId"] for r in last["items"]], last["next"]) == (["s4"], None)
    web = (await api.client.get("/api/sessions", params={"label": "team=web"}, headers=acme)).json()
    assert [r["sessionId"] for r in web["items"]] == ["s0", "s2", "s4"]
    assert all(r["labels"] == {"team": "web"} for r in web["items"])
    bad = await api.client.get("/api/sessions", params={"limit": 0, "offset": -1}, headers=acme)
    assert bad.status_code == 422
    assert sorted(p.split(":")[0] for p in bad.json()["error"]["problems"]) == [
        "query.limit",
        "query.offset",
    ]


async def test_a_bad_create_lists_every_problem_as_validate_does_and_echoes_no_secret(
    api: Api,
) -> None:
    request = {
        "sessionId": "bad one",
        "cwd": "relative",
        "container": {"ports": [0], "env": {"GITHUB_TOKEN": "ghp_canary1"}},
    }
    response = await api.client.post(
        "/api/sessions/create",
        json={**request, "secretValues": {"X": "canary-value-2"}},
        headers=api.key("acme"),
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["kind"]) == (2, "invalid")
    cli = subprocess.run(
        [str(DOCKYARD), "validate", "--json", "--request", "-"],
        input=json.dumps({**request, "tenant": "acme"}),
        capture_output=True,
        text=True,
        env={**api.env, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        check=False,
        timeout=120,
    )
    assert cli.returncode == 2, cli.stderr
    assert error["problems"] == json.loads(cli.stdout)["error"]["problems"]
    assert len(error["problems"]) == 4
    assert "ghp_canary1" not in response.text
    assert "canary-value-2" not in response.text
    assert list((api.state / "sessions").glob("*.json")) == []


async def test_http_layer_problems_come_at_once_and_name_key_paths(api: Api) -> None:
    acme = api.key("acme")
    not_object = await api.client.post("/api/sessions/create", json=[1], headers=acme)
    assert not_object.status_code == 422
    assert not_object.json()["error"]["problems"][0].startswith("request: ")
    both = await api.client.post(
        "/api/sessions/create",
        json={"sessionId": "s", "tenant": "other", "secretValues": {"A": 1}},
        headers=acme,
    )
    assert both.status_code == 422
    keys = [p.split(":")[0] for p in both.json()["error"]["problems"]]
    assert keys == ["request.secretValues", "request.tenant"]
    missing = await api.client.get("/api/cloud/providers/modal/plan", headers=acme)
    assert sorted(p.split(":")[0] for p in missing.json()["error"]["problems"]) == [
        "query.cwd",
        "query.sessionId",
    ]


@pytest.mark.parametrize("limits", [Limits(body_bytes=2000)])
async def test_a_body_over_the_limit_is_refused_before_it_is_read(api: Api) -> None:
    big = {"sessionId": "s", "cwd": "/srv/app", "pad": "x" * 5000}
    response = await api.client.post("/api/sessions/create", json=big, headers=api.key("acme"))
    assert response.status_code == 413, response.text
    assert response.json()["error"]["problems"] == [
        "request: the body is over 2000 bytes (allowed: at most 2000)"
    ]


@pytest.mark.parametrize("limits", [Limits(body_bytes=2000)])
async def test_a_chunked_body_is_cut_off_once_it_passes_the_limit(api: Api) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"sessionId": "s", "pad": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}'

    response = await api.client.post(
        "/api/sessions/create", content=chunks(), headers=api.key("acme")
    )
    assert "content-length" not in response.request.headers
    assert response.status_code == 413, response.text
    assert response.json()["error"]["kind"] == "too-large"


@pytest.mark.parametrize("limits", [Limits(rate=0.01, burst=3)])
async def test_a_key_past_its_rate_gets_429_and_others_keep_going(api: Api) -> None:
    busy, calm = api.key("acme"), api.key("acme")
    codes = [(await api.client.get("/api/sessions", headers=busy)).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    limited = await api.client.get("/api/sessions", headers=busy)
    assert limited.json()["error"]["kind"] == "rate-limited"
    assert int(limited.headers["retry-after"]) >= 1
    assert (await api.client.get("/api/sessions", headers=calm)).status_code == 200


async def test_an_unexpected_failure_is_a_500_with_the_request_id_and_no_traceback(
    api: Api, tmp_path: Path
) -> None:
    # The host settings path is a directory: reading it raises an OSError nobody expects.
    settings = Path(api.env["DOCKYARD_CONFIG"])
    settings.unlink()
    settings.mkdir()
    response = await api.client.post(
        "/api/sessions/create", json={"sessionId": "s", "cwd": "/srv/app"}, headers=api.key("acme")
    )
    assert response.status_code == 500
    rid = response.headers["x-request-id"]
    error = response.json()["error"]
    assert error["requestId"] == rid
    assert rid in error["problems"][0]
    assert "Traceback" not in response.text
    assert "IsADirectoryError" not in response.text


async def test_every_request_lands_in_the_audit_trail_with_the_keys_id(api: Api) -> None:
    issued = api.store.create("acme")
    headers = {"Authorization": f"Bearer {issued.key}"}
    ok = await api.client.get("/api/sessions", headers=headers)
    missing = await api.client.get("/api/sessions/nosuch", headers=headers)
    anonymous = await api.client.get("/api/sessions")
    lines = [e for e in audit.read(api.state / "audit.jsonl") if e["action"] == "api"]
    assert [(e["actor"], e["result"]) for e in lines] == [
        (f"key:{issued.info.id}", "ok"),
        (f"key:{issued.info.id}", "error"),
        ("anonymous", "error"),
    ]
    for entry, response in zip(lines, (ok, missing, anonymous), strict=True):
        assert response.headers["x-request-id"] in entry["detail"]
    assert lines[1]["session"] == "nosuch"
    assert lines[1]["tenant"] == "acme"
    assert issued.key not in (api.state / "audit.jsonl").read_text()
    assert [k.last_used_at is not None for k in api.store.list() if k.id == issued.info.id] == [
        True
    ]


def test_request_ids_are_unique_hex_and_drawn_anew_in_a_forked_server() -> None:
    import os
    import re

    from dockyard.api.middleware import request_id

    ids = [request_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # a forked server's first ids
        os.write(write, "".join(request_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        theirs = pipe.read()
    os.waitpid(child, 0)
    mine = request_id()
    assert len(theirs) == 96
    assert not {theirs[i : i + 32] for i in (0, 32, 64)} & {*ids, mine}
