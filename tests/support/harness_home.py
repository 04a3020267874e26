"""A sessions service on the real engine for a test module: its own state and project
directories, the harness driver where Pulumi would run, and the sweep of what a tenant's
sessions left on the engine."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors

from dockyard.sessions import Sessions
from dockyard.sessions import snapshots as snapshot_store
from dockyard.sessions.settings import paths
from tests.harness.sessions import HarnessDriver
from tests.support.engine import remove_volume
from tests.support.program import REPO

DRIVER = "tests.harness.sessions:HarnessDriver"


@dataclass(frozen=True)
class Home:
    """A dockyard home under a test's base directory."""

    state: Path
    project: Path
    settings: Path

    def env(self) -> dict[str, str]:
        """The environment a `dockyard` process (serve, the CLI) runs with on this home:
        the harness driver where Pulumi would run, loopback never through a proxy."""
        return {
            **os.environ,
            "DOCKYARD_STATE_DIR": str(self.state),
            "DOCKYARD_CONFIG": str(self.settings),
            "DOCKYARD_DRIVER": DRIVER,
            "PYTHONPATH": str(REPO),
            "NO_PROXY": "127.0.0.1,localhost",
        }


def make_home(base: Path, image: str, settings: dict[str, Any]) -> Home:
    """``base``/state (naming ``image`` as the core image), ``base``/project and
    ``base``/settings.yaml holding ``settings``."""
    home = Home(base / "state", base / "project", base / "settings.yaml")
    home.state.mkdir()
    home.project.mkdir()
    (home.state / "image.json").write_text(json.dumps({"imageRef": image}))
    home.settings.write_text(json.dumps(settings))
    return home


@contextmanager
def harness_sessions(base: Path, image: str, settings: dict[str, Any]) -> Iterator[Sessions]:
    """Sessions under ``base`` (``state/``, ``project/``, ``settings.yaml``) on ``image``;
    whatever is left of them is destroyed at the end by the caller's sweep."""
    home = make_home(base, image, settings)
    where = paths({"DOCKYARD_STATE_DIR": str(home.state), "DOCKYARD_CONFIG": str(home.settings)})
    yield Sessions(where, HarnessDriver(where))


@contextmanager
def tenant_sessions(
    client: docker.DockerClient,
    base: Path,
    image: str,
    tenant: str,
    settings: dict[str, Any] | None = None,
    *,
    snapshots: bool = False,
) -> Iterator[Sessions]:
    """:func:`harness_sessions` for one tenant's tests (``settings`` default: a 5 s health
    check interval). On the way out the tenant's sessions are destroyed, with ``snapshots``
    its snapshots too (their images and disk copies, whatever a failed remove left), and
    :func:`sweep_tenant` removes what is left on the engine."""
    chosen = {"healthcheck": {"interval": "5s"}} if settings is None else settings
    with harness_sessions(base, image, chosen) as api:
        try:
            yield api
        finally:
            clear_tenant(client, api, tenant, snapshots=snapshots)


def clear_tenant(
    client: docker.DockerClient, api: Sessions, tenant: str, *, snapshots: bool = False
) -> None:
    """Destroy the tenant's sessions (:func:`destroy_all`); with ``snapshots`` remove its
    snapshots, going on past failures; then :func:`sweep_tenant`, and with ``snapshots``
    the tenant's snapshot images and disk copies that a failed remove left."""
    destroy_all(api, tenant)
    if snapshots:
        for snapshot in api.snapshots(tenant):
            with suppress(Exception):
                api.remove_snapshot(snapshot.name, tenant)
    sweep_tenant(client, tenant)
    if snapshots:
        selector = {"label": f"{snapshot_store.LABEL_NAMESPACE}={tenant}"}
        for image in client.images.list(filters=selector):
            with suppress(docker.errors.APIError):
                client.images.remove(image.id, force=True)
        shutil.rmtree(f"{snapshot_store.SNAPSHOTS_DIR}/{tenant}", ignore_errors=True)


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
