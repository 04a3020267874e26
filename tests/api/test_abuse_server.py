"""Support (no tests here): ``dockyard serve`` in a process of its own on a free loopback
port, on a state directory and SQLite key store of its own, sessions realised by the
harness driver on the real engine. Used by the abuse tests and the TypeScript client's
test; everything it creates carries its tenants and is swept afterwards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx

from dockyard.api.store import KeyStore, default_url
from tests.support.engine import RUN_ID
from tests.support.harness_home import Home, sweep_tenant
from tests.support.server import DOCKYARD, serve

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Running:
    url: str
    base: Path
    state: Path
    settings: Path
    project: Path
    tenants: tuple[str, ...]
    keys: dict[str, str] = field(default_factory=dict)
    log: Path | None = None

    def headers(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def client(self, who: str, timeout: float = 120) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers=self.headers(who), timeout=timeout, trust_env=False
        )

    def request(self, session: str) -> dict[str, Any]:
        return {"sessionId": session, "cwd": str(self.project), "backend": "claude"}

    def settings_with(self, **extra: Any) -> None:
        self.settings.write_text(json.dumps({"healthcheck": {"interval": "5s"}, **extra}))


def sweep(client: docker.DockerClient, tenants: tuple[str, ...]) -> None:
    for tenant in tenants:
        sweep_tenant(client, tenant)


def on_engine(client: docker.DockerClient, tenant: str) -> list[str]:
    """What the engine holds of a tenant: containers, networks, volumes."""
    selector = {"label": f"dockyard.stack={tenant}"}
    return [
        *(f"container {c.name}" for c in client.containers.list(all=True, filters=selector)),
        *(f"network {n.name}" for n in client.networks.list(filters=selector)),
        *(f"volume {v.name}" for v in client.volumes.list(filters=selector)),
    ]


@contextmanager
def running_server(
    base: Path,
    core_image: str,
    docker_client: docker.DockerClient,
    *serve_args: str,
    keys: dict[str, str | None],
    tag: str,
) -> Iterator[Running]:
    """The server with a key per name in ``keys`` (its tenant; None: an admin key)."""
    assert DOCKYARD.is_file(), f"the dockyard console script is not installed at {DOCKYARD}"
    state, project = base / "state", base / "project"
    state.mkdir(parents=True)
    project.mkdir()
    (state / "image.json").write_text(json.dumps({"imageRef": core_image}))
    store_url = default_url(state)
    tenants = tuple(sorted({t for t in keys.values() if t}))
    made = Running("", base, state, base / "settings.yaml", project, tenants)
    made.settings_with()
    store = KeyStore(store_url)
    try:
        for who, tenant in keys.items():
            made.keys[who] = store.create(tenant, tenant is None).key
    finally:
        store.close()
    env = Home(state, project, made.settings).env()
    made.log = base / f"server-{tag}.log"
    try:
        with serve(env, store_url, made.log, *serve_args) as serving:
            made.url = serving.url
            yield made
    finally:
        sweep(docker_client, tenants)


def tenant_names(tag: str, *names: str) -> dict[str, str]:
    """Tenant names unique to this run (letters and digits, short)."""
    return {name: f"{name[0]}{tag}{RUN_ID[:6]}" for name in names}
