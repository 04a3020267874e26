"""Host quotas: caps on what dockyard environments on one Docker host reserve.

Use is counted from the engine (containers labelled ``dockyard.managed=true``, whatever
stack, session or process made them: their CPU quota and memory limit) plus the
reservations of creates still in flight on this machine, under a lock, so ten sessions
created at once cannot each see room for one more. A create reserves before anything
is made and drops the reservation when it is done, succeeded or not.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..capacity import Use, count
from ..config import QuotaCaps, Quotas
from ..errors import QuotaExceeded
from . import processes

STALE_AFTER_S = 3600


class QuotaError(QuotaExceeded):
    """A create would pass a cap; the message names host, cap, use and request."""


@dataclass(frozen=True)
class Request:
    host: str
    stack: str
    session: str
    tenant: str | None
    cpus: float
    memory: int

    @property
    def use(self) -> Use:
        return Use(1, self.cpus, self.memory)


def engine_use(client: Any, *, exclude: tuple[str, str] | None = None) -> dict[str | None, Use]:
    """Use per tenant (None: no tenant) from the engine's labelled containers; ``exclude``
    is (stack, session) of the environment being converged (it does not count twice)."""
    return count(client, exclude=exclude).use


def _total(by_tenant: dict[str | None, Use]) -> Use:
    total = Use()
    for use in by_tenant.values():
        total = total.plus(use)
    return total


def check(quotas: Quotas, use: dict[str | None, Use], request: Request) -> None:
    """Raise :class:`QuotaError` if ``request`` on top of ``use`` passes a cap."""
    scopes: list[tuple[str, QuotaCaps, Use]] = [
        (f"host {request.host}", quotas.for_host(request.host), _total(use))
    ]
    if request.tenant and request.tenant in quotas.tenants:
        scopes.append(
            (
                f"tenant {request.tenant} on host {request.host}",
                quotas.tenants[request.tenant],
                use.get(request.tenant, Use()),
            )
        )
    for scope, caps, current in scopes:
        after = current.plus(request.use)
        for name, cap, now, wanted, unit in (
            ("environments", caps.environments, current.environments, 1, ""),
            ("cpus", caps.cpus, current.cpus, request.cpus, " CPUs"),
            ("memory", caps.memory, current.memory, request.memory, " MB"),
        ):
            if cap is not None and getattr(after, name) > cap + 1e-9:
                raise QuotaError(
                    f"quota: {scope} allows {name} {cap:g}{unit}; {now:g}{unit} in use, "
                    f"session {request.session} asks {wanted:g}{unit} more"
                )


class Reservations:
    """Creates in flight on this machine, one file each, under one lock."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _pending(self, host: str, exclude: str) -> dict[str | None, Use]:
        pending: dict[str | None, Use] = {}
        for path in self.directory.glob("*.json"):
            try:
                entry = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if entry.get("stack_name") == exclude or entry.get("host") != host:
                continue
            if (
                not processes.alive(entry.get("pid", 0))
                or time.time() - entry.get("at", 0) > STALE_AFTER_S
            ):
                path.unlink(missing_ok=True)
                continue
            tenant = entry.get("tenant")
            pending[tenant] = pending.get(tenant, Use()).plus(
                Use(1, float(entry["cpus"]), int(entry["memory"]))
            )
        return pending

    @contextlib.contextmanager
    def reserve(
        self, quotas: Quotas, client: Any, request: Request, stack_name: str
    ) -> Iterator[None]:
        """Check the caps against the engine and in-flight creates, hold a reservation
        for the duration of the block, then drop it."""
        path = self.directory / f"{stack_name}.json"
        with self._lock():
            use = engine_use(client, exclude=(request.stack, request.session))
            for tenant, pending in self._pending(request.host, stack_name).items():
                use[tenant] = use.get(tenant, Use()).plus(pending)
            check(quotas, use, request)
            path.write_text(
                json.dumps(
                    {
                        "stack_name": stack_name,
                        "host": request.host,
                        "tenant": request.tenant,
                        "cpus": request.cpus,
                        "memory": request.memory,
                        "pid": os.getpid(),
                        "at": time.time(),
                    }
                )
            )
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
