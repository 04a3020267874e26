"""Wake on use (issue 29 item 4) with fakes: an exec or file call the engine refuses
because the container is not running (409) wakes the session once and is made again; the
wake itself is a resume, audited with what woke it. The engine proof (a paused session,
an API exec, the session running again) is tests/integration/test_wake_on_engine.py."""

from __future__ import annotations

import json
from typing import Any

import docker.errors
import pytest
import requests

from dockyard.errors import Conflict
from dockyard.sessions import Sessions, hibernate
from dockyard.sessions.workspace_container import Container, Limits
from tests.unit.test_hibernate import ABLE, FakeEngine, _on
from tests.unit.test_hibernate import api as api  # the fixture


def _refused(status: int, said: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError(said, response=response, explanation=said)


class FakeApi:
    """exec_create answers 409 while the fake container is not running."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.creates = 0

    def exec_create(self, container: str, argv: list[str], **_: Any) -> dict[str, str]:
        self.creates += 1
        if self.engine.status != "running":
            raise _refused(409, f"Container {container} is {self.engine.status}")
        return {"Id": f"exec-{self.creates}"}

    def exec_start(self, exec_id: str, socket: bool, tty: bool) -> Any:
        return "socket"


def _container(engine: FakeEngine, wake: Any) -> tuple[Container, FakeApi]:
    record: Any = type("R", (), {"session_id": "s1"})()
    fake_api = FakeApi(engine)
    container = Container(
        record, {"container": {"id": "c0ffee"}}, type("C", (), {"api": fake_api})(), Limits()
    )
    container.wake = wake
    return container, fake_api


@pytest.fixture(autouse=True)
def _plain_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    from dockyard.sessions import workspace_container

    monkeypatch.setattr(workspace_container, "raw_socket", lambda s: s)


def test_an_exec_on_a_paused_container_wakes_it_once_and_runs() -> None:
    engine = FakeEngine("paused")
    woken: list[str] = []

    def wake() -> bool:
        woken.append(engine.status)
        engine.status = "running"
        return True

    container, engine_api = _container(engine, wake)
    assert container._exec_socket(["true"], stdin=False) == ("exec-2", "socket")
    assert (woken, engine_api.creates) == (["paused"], 2)
    # Running now: no more wakes.
    container._exec_socket(["true"], stdin=False)
    assert woken == ["paused"]


@pytest.mark.parametrize("wakes", [None, False])
def test_without_a_wake_or_when_it_cannot_the_caller_gets_the_conflict(wakes: bool | None) -> None:
    engine = FakeEngine("exited")
    container, engine_api = _container(engine, None if wakes is None else (lambda: wakes))
    with pytest.raises(Conflict, match=r"its container is not running \(`dockyard refresh s1`"):
        container._exec_socket(["true"], stdin=False)
    assert engine_api.creates == 1


def test_a_wake_that_did_not_help_is_not_tried_again() -> None:
    engine = FakeEngine("paused")
    calls: list[int] = []
    container, engine_api = _container(engine, lambda: calls.append(1) or True)  # says yes, is not
    with pytest.raises(Conflict):
        container._exec_socket(["true"], stdin=False)
    assert (calls, engine_api.creates) == ([1], 2)


def test_the_wake_is_a_resume_audited_with_what_woke_it(
    api: Sessions,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = FakeEngine("paused")
    _on(monkeypatch, engine, ABLE)
    assert hibernate.wake(api, "s1", "acme", "exec or file call") is True
    assert engine.calls == ["unpause"]
    # A hibernated session is restored by the same wake.
    api.hibernate("s1", "acme")
    assert hibernate.wake(api, "s1", "acme", "exec or file call") is True
    assert engine.calls[-2:] == ["start dockyard-hibernate", "rm dockyard-hibernate"]
    lines = [json.loads(x) for x in api.where.audit_log.read_text().splitlines()]
    wakes = [x for x in lines if "woken by" in (x.get("detail") or "")]
    assert [(x["action"], x["result"], x["detail"]) for x in wakes] == [
        ("resume", "ok", "woken by exec or file call"),
        (
            "resume",
            "ok",
            "woken by exec or file call; restored from its checkpoint (processes and memory "
            "as they were)",
        ),
    ]


def test_an_ssh_certificate_wakes_a_suspended_session_and_leaves_a_running_one_alone(
    api: Sessions,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    record = api.registry.find("s1", "acme")
    engine = FakeEngine("running")
    _on(monkeypatch, engine, ABLE)
    assert hibernate.wake_if_suspended(api, record, "ssh certificate") is False
    assert not api.where.audit_log.exists()  # nothing woken, nothing audited
    engine.status = "paused"
    assert hibernate.wake_if_suspended(api, record, "ssh certificate") is True
    assert engine.calls == ["unpause"]
    api.hibernate("s1", "acme")
    assert hibernate.wake_if_suspended(api, record, "ssh certificate") is True
    assert engine.status == "running"
    engine.status = "exited"  # stopped without a checkpoint: not this path's to start
    assert hibernate.wake_if_suspended(api, record, "ssh certificate") is False
    lines = [json.loads(x) for x in api.where.audit_log.read_text().splitlines()]
    assert [x.get("detail", "").split(";")[0] for x in lines if x["action"] == "resume"] == [
        "woken by ssh certificate",
        "woken by ssh certificate",
    ]
