"""The sessions service over fakes, for unit tests of its verbs: a home under a test's
directory, no driver (a verb that would run Pulumi fails), sessions registered as create
records them with nothing behind them until a test fakes the engine."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

from dockyard.sessions import Sessions, registry
from dockyard.sessions.settings import paths
from tests.support.harness_home import make_home


def registered_sessions(base: Path, tenants: Sequence[str], session: str = "s1") -> Sessions:
    """Sessions under ``base`` (``state/``, ``project/``, empty settings) on no driver, with
    ``session`` registered for each of ``tenants`` (stack ``<tenant>.<session>``, cwd and
    manifest path under ``base``, naming v2)."""
    home = make_home(base, "dockyard-core:test", {})
    where = paths({"DOCKYARD_STATE_DIR": str(home.state), "DOCKYARD_CONFIG": str(home.settings)})
    sessions = Sessions(where, SimpleNamespace())  # type: ignore[arg-type]
    for tenant in tenants:
        sessions.registry.save(
            registry.Record(
                session_id=session,
                tenant=tenant,
                stack_name=f"{tenant}.{session}",
                cwd=str(base),
                manifest_path=str(base / f"{tenant}.json"),
                host="local",
                request={"sessionId": session, "cwd": str(base), "tenant": tenant},
                created_at="2026-12-06T00:00:00Z",
                naming="v2",
            )
        )
    return sessions
