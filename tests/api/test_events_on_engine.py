"""Events on the real engine (issue 27 item 3's proof): a session created and destroyed
over HTTP with the harness driver (the engine where Pulumi would run) gives created, ready
(the engine's own answer: running and healthy) and destroyed, in that order, on the
session's stream, and the same to a tenant's webhook on a loopback receiver."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest

from dockyard.api.store import KeyStore, default_url
from tests.api.test_events_support import Server, SseReader, receiver, running_server
from tests.support.engine import RUN_ID, remove_volume

pytestmark = pytest.mark.docker
HARNESS = "tests.harness.sessions:HarnessDriver"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[KeyStore]:
    """SQLite only here (CI time): the store's code paths on PostgreSQL are the same ones
    test_events.py and test_webhooks.py run on both."""
    opened = KeyStore(default_url(tmp_path / "store"))
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def server(
    tmp_path: Path, store: KeyStore, core_image: str, docker_client: docker.DockerClient
) -> Iterator[Server]:
    settings = {"healthcheck": {"interval": "1s", "startPeriod": "1s"}}
    with running_server(tmp_path, store, driver_name=HARNESS, settings=settings) as running:
        (running.sessions.where.state / "image.json").write_text(
            json.dumps({"imageRef": core_image})
        )
        (tmp_path / "project").mkdir()
        try:
            yield running
        finally:
            selector = {"label": f"dockyard.session=ev{RUN_ID[:8]}"}
            for container in docker_client.containers.list(all=True, filters=selector):
                container.remove(force=True, v=True)
            for network in docker_client.networks.list(filters=selector):
                network.remove()
            for volume in docker_client.volumes.list(filters=selector):
                remove_volume(volume)


def test_created_ready_destroyed_in_order_on_the_stream_and_the_webhook(
    server: Server, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    tenant, session = f"ev{RUN_ID[:6]}", f"ev{RUN_ID[:8]}"
    key = server.key(tenant)
    with receiver() as hook_receiver:
        made = httpx.post(
            f"{server.url}/api/webhooks",
            json={"url": hook_receiver.url, "events": ["session.ready", "session.destroyed"]},
            headers=key,
        )
        assert made.status_code == 201, made.text
        with SseReader(f"{server.url}/api/events?session={session}", key) as reader:
            created = httpx.post(
                f"{server.url}/api/sessions",
                json={"sessionId": session, "cwd": str(tmp_path / "project"), "backend": "claude"},
                headers=key,
                timeout=180,
            )
            assert created.status_code == 201, created.text
            answered = time.monotonic()
            first, ready = reader.take(2, timeout=60)
            container = docker_client.containers.get(created.json()["container"]["id"])
            assert container.attrs["State"]["Health"]["Status"] == "healthy"
            gone = httpx.delete(f"{server.url}/api/sessions/{session}", headers=key, timeout=180)
            assert gone.status_code < 300, gone.text
            (destroyed,) = reader.take(1, timeout=30)
            hook_receiver.wait_for(2)
        print(
            f"created event {1000 * (first.received - answered):.0f} ms after the create "
            f"answered; ready {1000 * (ready.received - answered):.0f} ms after"
        )
    assert [e.type for e in (first, ready, destroyed)] == [
        "session.created",
        "session.ready",
        "session.destroyed",
    ]
    assert first.id < ready.id < destroyed.id
    assert {e.data["tenant"] for e in (first, ready, destroyed)} == {tenant}
    sent = [json.loads(body) for _, body, _ in hook_receiver.got]
    assert [(e["type"], e["id"]) for e in sent] == [
        ("session.ready", ready.id),
        ("session.destroyed", destroyed.id),
    ]
