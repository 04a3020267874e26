"""What an operator sees of the hosts sessions run on (the dashboard's host view): quota
use against each cap per host and tenant, the images in use, the engine's version and
runtimes, and the host health report's last run.

Use is counted from each engine the way a create's quota check counts it
(:func:`dockyard.capacity.count`: every ``dockyard.managed`` container, by tenant); the
caps are the host settings' ``quotas`` (:class:`dockyard.config.Quotas`). An engine that
cannot be asked is reported with the reason, and the other hosts still are.
"""

from __future__ import annotations

import json
import os
import stat
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..capacity import EngineState, Use, count
from ..capacity import connect as connect_engine
from ..config import ConfigError, QuotaCaps, Quotas, from_host_settings
from ..contract import MANAGED_SELECTOR
from .service import SessionsLike
from .settings import load_settings

HEALTH_REPORT = Path("/var/lib/dockyard/health/report.json")
"""Where the env_health role's report goes (``env_health_report_file``); the server's
``DOCKYARD_HEALTH_REPORT`` names another."""
HEALTH_REPORT_MAX = 8 * 2**20
"""The largest health report read (bytes): a report is a few hundred bytes per environment;
past this it is not read at all, like every other file the host side reads."""
CAPS = (("environments", ""), ("cpus", " CPUs"), ("memory", " MB"))


@dataclass(frozen=True)
class CapUse:
    """One cap of one scope: what is in use against it (``cap`` None: no cap)."""

    name: str
    used: float
    cap: float | None
    unit: str

    @property
    def percent(self) -> float | None:
        if not self.cap:
            return None
        return round(100.0 * self.used / self.cap, 1)


@dataclass(frozen=True)
class Scope:
    """A host (``tenant`` None) or one tenant on it, with its caps."""

    host: str
    tenant: str | None
    caps: list[CapUse]


@dataclass
class HostView:
    host: str
    engine: dict[str, Any] = field(default_factory=dict)
    """version, apiVersion, os, defaultRuntime, runtimes; empty when ``error``."""
    scopes: list[Scope] = field(default_factory=list)
    images: list[tuple[str, int]] = field(default_factory=list)
    """(image, containers using it), most used first."""
    error: str | None = None


def _caps(caps: QuotaCaps, use: Use) -> list[CapUse]:
    return [
        CapUse(name, float(getattr(use, name)), getattr(caps, name), unit) for name, unit in CAPS
    ]


def scopes(host: str, quotas: Quotas, state: EngineState) -> list[Scope]:
    """The host's total against its caps, then each tenant with a cap or with use."""
    found = [Scope(host, None, _caps(quotas.for_host(host), state.total))]
    tenants = sorted({t for t in state.use if t} | set(quotas.tenants))
    for tenant in tenants:
        caps = quotas.tenants.get(tenant, QuotaCaps())
        found.append(Scope(host, tenant, _caps(caps, state.use.get(tenant, Use()))))
    return found


def engine_facts(client: Any) -> dict[str, Any]:
    """The engine's version and its runtimes (runc, runsc, …) with the default one."""
    version = client.version()
    info = client.info()
    return {
        "version": version.get("Version") or info.get("ServerVersion"),
        "apiVersion": version.get("ApiVersion"),
        "os": f"{info.get('OperatingSystem') or version.get('Os') or '?'}",
        "defaultRuntime": info.get("DefaultRuntime"),
        "runtimes": sorted(info.get("Runtimes") or {}),
    }


def images_in_use(client: Any) -> list[tuple[str, int]]:
    """Each image the engine's dockyard containers run, with how many use it."""
    used = Counter(
        str(c.get("Image") or c.get("ImageID") or "?")
        for c in client.api.containers(all=True, filters={"label": MANAGED_SELECTOR})
    )
    return sorted(used.items(), key=lambda item: (-item[1], item[0]))


def hosts(sessions: SessionsLike) -> tuple[list[str], Quotas]:
    """The hosts sessions are placed on (the settings' engine, and every host a session
    was created on), and the host settings' quotas."""
    settings = load_settings(sessions.where)
    try:
        config = from_host_settings(settings, stack="sessions", cwd=str(sessions.where.state))
    except ConfigError:
        config = None  # the settings' own problems are shown by every create; no caps here
    quotas = config.quotas if config is not None else Quotas()
    default = (config.docker_host if config is not None else None) or "local"
    recorded = {record.host for record in sessions.registry.all()}
    return [default, *sorted(recorded - {default})], quotas


def host_views(
    sessions: SessionsLike, connect: Callable[[str | None], Any] | None = None
) -> list[HostView]:
    """One view per host; an engine that cannot be asked carries its reason."""
    import docker.errors

    opened = connect or connect_engine
    names, quotas = hosts(sessions)
    views = []
    for host in names:
        view = HostView(host)
        try:
            client = opened(None if host == "local" else host)
        except docker.errors.DockerException as exc:
            view.error = f"the engine ({host}) cannot be reached: {exc}"
            views.append(view)
            continue
        try:
            view.engine = engine_facts(client)
            view.scopes = scopes(host, quotas, count(client))
            view.images = images_in_use(client)
        except docker.errors.DockerException as exc:
            view.error = f"the engine ({host}) did not answer: {exc}"
        finally:
            client.close()
        views.append(view)
    return views


def health_report(
    path: Path | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The health report's last run: when, how many environments, which need a refresh or
    are unhealthy; ``error`` when there is no readable report (the role is not applied,
    or its timer has not run yet)."""
    env = os.environ if environ is None else environ
    where = path or Path(env.get("DOCKYARD_HEALTH_REPORT") or HEALTH_REPORT)
    try:
        data = _bounded(where, HEALTH_REPORT_MAX)
        report = json.loads(data) if data is not None else None
    except FileNotFoundError:
        return {
            "path": str(where),
            "error": "no report yet (the env_health role writes it on each run; docs/hosts.md)",
        }
    except (OSError, ValueError) as exc:
        return {"path": str(where), "error": f"the report cannot be read: {type(exc).__name__}"}
    if data is None:
        return {
            "path": str(where),
            "error": (
                f"the report is not a regular file of at most {HEALTH_REPORT_MAX} bytes "
                "(allowed: the env_health role's JSON report; not read)"
            ),
        }
    environments = report.get("environments") if isinstance(report, dict) else None
    if not isinstance(environments, list):
        return {"path": str(where), "error": "the report has no environments list"}
    listed = [e for e in environments if isinstance(e, dict)]
    return {
        "path": str(where),
        "generatedAt": report.get("generatedAt"),
        "environments": len(listed),
        "unhealthy": sorted(str(e.get("name")) for e in listed if e.get("health") == "unhealthy"),
        "needRefresh": sorted(str(e.get("name")) for e in listed if e.get("refresh_reasons")),
        "actions": sorted(
            f"{e.get('name')}: {e.get('action')}"
            for e in listed
            if e.get("action") not in (None, "none")
        ),
    }


def _bounded(path: Path, limit: int) -> bytes | None:
    """The file's bytes; None when it is no regular file or holds more than ``limit``
    (opened without blocking, so a FIFO put in its place cannot hang the reader)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks, size = [], 0
        while size <= limit and (chunk := os.read(fd, min(1 << 20, limit + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    return None if size > limit else b"".join(chunks)
