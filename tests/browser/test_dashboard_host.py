"""The host view (``/host``): quota use against each cap per host and tenant, the images
in use, the engine's version and runtimes, the health report's last run; admin keys only.
The engine is a fake Docker client handed to the service layer's
:mod:`dockyard.sessions.host_view` (no engine is asked); the app and its seeded sessions
are tests/browser/conftest.py's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import httpx
import pytest

from dockyard.capacity import EngineState, Use
from dockyard.config import Quotas
from dockyard.contract import (
    LABEL_LIMITS_CPUS,
    LABEL_LIMITS_MEMORY,
    LABEL_MANAGED,
    LABEL_SESSION,
    LABEL_STACK,
    LABEL_TENANT,
)
from dockyard.sessions import host_view
from tests.browser.conftest import Served, log_in, shoot
from tests.browser.test_dashboard_browser import accessible
from tests.browser.test_dashboard_http import _client
from tests.browser.test_dashboard_http import log_in as http_log_in


def container(tenant: str | None, session: str, image: str, cpus: float, memory: int) -> Any:
    labels = {
        LABEL_MANAGED: "true",
        LABEL_STACK: tenant or "sessions",
        LABEL_SESSION: session,
        LABEL_LIMITS_CPUS: str(cpus),
        LABEL_LIMITS_MEMORY: str(memory),
    }
    if tenant:
        labels[LABEL_TENANT] = tenant
    return {"Id": session * 8, "Image": image, "Labels": labels}


class FakeApi:
    def __init__(self, containers: list[dict[str, Any]]) -> None:
        self.listed = containers
        self.filters: list[Any] = []

    def containers(self, all: bool = False, filters: Any = None) -> list[dict[str, Any]]:
        assert all
        self.filters.append(filters)
        return self.listed


class FakeClient:
    """What host_view asks of a Docker SDK client."""

    def __init__(self, containers: list[dict[str, Any]], runtimes: tuple[str, ...]) -> None:
        self.api = FakeApi(containers)
        self.runtimes = runtimes
        self.closed = False

    def version(self) -> dict[str, Any]:
        return {"Version": "27.3.1", "ApiVersion": "1.47", "Os": "linux"}

    def info(self) -> dict[str, Any]:
        return {
            "ServerVersion": "27.3.1",
            "OperatingSystem": "Debian GNU/Linux 12 (bookworm)",
            "DefaultRuntime": "runc",
            "Runtimes": {name: {"path": name} for name in self.runtimes},
        }

    def close(self) -> None:
        self.closed = True


LOCAL = [
    container("acme", "a1", "dockyard-core:1.0", 1.0, 2048),
    container("acme", "a2", "dockyard-core:1.0", 1.0, 2048),
    container("blue", "b1", "dockyard-python:1.0", 2.0, 4096),
    container(None, "s1", "dockyard-core:1.0", 0.5, 1024),
]


@pytest.fixture
def engines(served: Served, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """The local engine (four dockyard containers, runc and runsc) and a second host that
    cannot be reached; quotas in the host settings; a health report."""
    opened: dict[str, Any] = {}

    def connect(url: str | None) -> Any:
        if url is not None:
            raise docker.errors.DockerException(f"Error while fetching server API version: {url}")
        opened["local"] = FakeClient(LOCAL, ("runc", "runsc"))
        return opened["local"]

    settings = served.sessions.where.config_file
    assert settings is not None
    settings.write_text(
        json.dumps(
            {
                "healthcheck": {"interval": "5s"},
                "quotas": {
                    "environments": 10,
                    "cpus": 8,
                    "memory": 16384,
                    "tenants": {"acme": {"environments": 2, "memory": 8192}, "gold": {"cpus": 4}},
                },
            }
        )
    )
    # A session placed on a second engine (the registry names its host).
    record = served.sessions.registry.find("b1", "blue")
    served.sessions.registry.save(type(record)(**{**record.__dict__, "host": "ssh://ops@10.0.0.9"}))
    report = tmp_path / "report.json"
    report.write_text(
        json.dumps(
            {
                "generatedAt": "2026-12-06T22:00:00Z",
                "environments": [
                    {"name": "dockyard-t.acme.a1", "health": "healthy", "refresh_reasons": []},
                    {
                        "name": "dockyard-t.acme.a2",
                        "health": "unhealthy",
                        "refresh_reasons": ["failing streak 4 >= 3"],
                        "action": "refreshed as 0123456789ab",
                    },
                ],
            }
        )
    )
    monkeypatch.setenv("DOCKYARD_HEALTH_REPORT", str(report))
    monkeypatch.setattr(host_view, "connect_engine", connect)
    return opened


@pytest.fixture
def admin(served: Served) -> Iterator[httpx.Client]:
    with _client(served) as client:
        assert http_log_in(client, served.keys["admin"]).status_code == 303
        yield client


def row(text: str, scope: str) -> str:
    return text.split(f'<tr data-scope="{scope}">', 1)[1].split("</tr>", 1)[0]


def test_host_view_shows_use_against_caps_images_engine_and_health(
    engines: dict[str, Any], admin: httpx.Client
) -> None:
    page = admin.get("/host")
    assert page.status_code == 200, page.text
    text = page.text
    local = text.split("Host <code>local</code>", 1)[1].split("</section>", 1)[0]
    # The whole host: 4 environments of 10, 4.5 CPUs of 8, 9216 MB of 16384.
    host = row(local, "host")
    assert "4 of 10 (40%)" in host
    assert "4.5 of 8 CPUs (56%)" in host
    assert "9216 of 16384 MB (56%)" in host
    assert '<meter min="0" max="10" value="4.0"' in host
    # Tenants: acme at its caps' use; blue with use and no cap; gold with a cap, no use.
    acme = row(local, "acme")
    assert "2 of 2 (100%)" in acme
    assert "4096 of 8192 MB (50%)" in acme
    assert '2 CPUs <span class="muted">(no cap)</span>' in acme
    assert '4096 MB <span class="muted">(no cap)</span>' in row(local, "blue")
    assert "0 of 4 CPUs (0%)" in row(local, "gold")
    # Images by use, engine version and runtimes.
    assert "<code>dockyard-core:1.0</code>: 3 containers" in local
    assert "<code>dockyard-python:1.0</code>: 1 container<" in local
    assert "Docker 27.3.1 (API 1.47)" in local
    assert "<code>runc</code> (default), <code>runsc</code>" in local
    assert engines["local"].closed
    assert engines["local"].api.filters == [{"label": f"{LABEL_MANAGED}=true"}] * 2
    # The second host answers nothing: said, and the rest of the page still there.
    other = text.split("Host <code>ssh://ops@10.0.0.9</code>", 1)[1].split("</section>", 1)[0]
    assert "the engine (ssh://ops@10.0.0.9) cannot be reached" in other
    # The health report's last run.
    health = text.split('id="h-health"', 1)[1]
    assert "2026-12-06T22:00:00Z" in health
    assert "<dt>Environments</dt><dd>2</dd>" in health
    assert "<dt>Unhealthy</dt><dd>dockyard-t.acme.a2</dd>" in health
    assert "dockyard-t.acme.a2: refreshed as 0123456789ab" in health


def test_a_tenant_key_has_no_host_view(served: Served, engines: dict[str, Any]) -> None:
    with _client(served) as acme:
        http_log_in(acme, served.keys["acme"])
        answer = acme.get("/host")
        assert answer.status_code == 404
        assert "no such page: /host" in answer.text
        assert "9216" not in answer.text
        assert 'href="/host"' not in acme.get("/").text
    assert engines == {}  # no engine was asked


def test_health_report_missing_or_unreadable(tmp_path: Path) -> None:
    missing = host_view.health_report(tmp_path / "none.json")
    assert missing["error"].startswith("no report yet")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert host_view.health_report(bad)["error"] == "the report cannot be read: JSONDecodeError"
    bad.write_text('{"environments": 3}')
    assert host_view.health_report(bad)["error"] == "the report has no environments list"
    env = {"DOCKYARD_HEALTH_REPORT": str(bad)}
    assert host_view.health_report(environ=env)["path"] == str(bad)
    assert host_view.health_report(environ={})["path"] == str(host_view.HEALTH_REPORT)


def test_scopes_count_caps_per_host_and_tenant() -> None:
    quotas = Quotas.model_validate(
        {"environments": 3, "hosts": {"big": {"environments": 50}}, "tenants": {"t1": {}}}
    )
    state = EngineState({"t1": Use(1, 1.0, 512), None: Use(2, 2.0, 1024)})
    local = host_view.scopes("local", quotas, state)
    assert [(s.tenant, s.caps[0].used, s.caps[0].cap) for s in local] == [
        (None, 3.0, 3),
        ("t1", 1.0, None),
    ]
    assert local[0].caps[0].percent == 100.0
    assert local[1].caps[0].percent is None
    assert host_view.scopes("big", quotas, state)[0].caps[0].cap == 50


def test_host_view_in_the_browser_is_accessible(
    page: Any, served: Served, engines: dict[str, Any]
) -> None:
    log_in(page, served.url, served.keys["admin"])
    page.get_by_role("link", name="Hosts").click()
    page.wait_for_url(served.url + "/host")
    assert page.locator("h1").inner_text() == "Hosts"
    meter = page.get_by_label("environments of tenant acme on local")
    assert meter.get_attribute("value") == "2.0"
    assert page.get_by_role("alert").inner_text().startswith("the engine (ssh://ops@10.0.0.9)")
    accessible(page)
    shoot(page, "host")
