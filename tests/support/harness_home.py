"""A sessions service on the real engine for a test module: its own state and project
directories, the harness driver where Pulumi would run, and the sweep of what a tenant's
sessions left on the engine."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker

from dockyard.sessions import Sessions
from dockyard.sessions.settings import paths
from tests.harness.sessions import HarnessDriver
from tests.support.engine import remove_volume


@contextmanager
def harness_sessions(base: Path, image: str, settings: dict[str, Any]) -> Iterator[Sessions]:
    """Sessions under ``base`` (``state/``, ``project/``, ``settings.yaml``) on ``image``;
    whatever is left of them is destroyed at the end by the caller's sweep."""
    state, project = base / "state", base / "project"
    state.mkdir()
    project.mkdir()
    (state / "image.json").write_text(json.dumps({"imageRef": image}))
    config = base / "settings.yaml"
    config.write_text(json.dumps(settings))
    where = paths({"DOCKYARD_STATE_DIR": str(state), "DOCKYARD_CONFIG": str(config)})
    yield Sessions(where, HarnessDriver(where))


def destroy_all(api: Sessions, tenant: str) -> None:
    """Destroy the tenant's sessions, going on past failures (the sweep takes the rest)."""
    for row in api.list(tenant):
        try:
            api.destroy(row["sessionId"], tenant)
        except Exception as exc:  # keep going: the sweep removes the rest
            print(f"cleanup: {row['sessionId']}: {exc}")


def sweep_tenant(client: docker.DockerClient, tenant: str) -> None:
    """Remove every container, network and volume of the tenant's stacks."""
    selector = {"label": f"dockyard.stack={tenant}"}
    for container in client.containers.list(all=True, filters=selector):
        container.remove(force=True, v=True)
    for network in client.networks.list(filters=selector):
        network.remove()
    for volume in client.volumes.list(filters=selector):
        remove_volume(volume)
