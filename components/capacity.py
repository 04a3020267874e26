"""What dockyard environments on one Docker engine reserve, counted from the engine.

Every container labelled ``dockyard.managed=true`` counts, whichever stack, session or
process made it: its CPU quota and memory limit, by tenant. Session quotas and
several-host placement both read this one count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .contract import (
    LABEL_LIMITS_CPUS,
    LABEL_LIMITS_MEMORY,
    LABEL_SESSION,
    LABEL_STACK,
    LABEL_TENANT,
    MANAGED_SELECTOR,
)


@dataclass(frozen=True)
class Use:
    environments: int = 0
    cpus: float = 0.0
    memory: int = 0
    """MB."""

    def plus(self, other: Use) -> Use:
        return Use(
            self.environments + other.environments,
            self.cpus + other.cpus,
            self.memory + other.memory,
        )


@dataclass
class EngineState:
    use: dict[str | None, Use] = field(default_factory=dict)
    """Use per tenant (None: no tenant)."""
    sessions: set[tuple[str, str]] = field(default_factory=set)
    """(stack, session) of the environments on this engine."""

    def add(self, tenant: str | None, amount: Use) -> None:
        self.use[tenant] = self.use.get(tenant, Use()).plus(amount)

    @property
    def total(self) -> Use:
        total = Use()
        for use in self.use.values():
            total = total.plus(use)
        return total


def count(client: Any, *, exclude: tuple[str, str] | None = None) -> EngineState:
    """The engine's dockyard containers; ``exclude`` is a (stack, session) not to count
    (the environment being converged)."""
    state = EngineState()
    for container in client.api.containers(all=True, filters={"label": MANAGED_SELECTOR}):
        labels = container.get("Labels") or {}
        key = (labels.get(LABEL_STACK) or "", labels.get(LABEL_SESSION) or "")
        if exclude is not None and key == exclude:
            continue
        cpus, memory = _reserved(labels)
        if cpus is None or memory is None:  # made before the labels existed: ask the engine
            host_config = client.api.inspect_container(container["Id"]).get("HostConfig") or {}
            period = host_config.get("CpuPeriod") or 100_000
            quota = host_config.get("CpuQuota") or 0
            cpus = quota / period if quota > 0 else (host_config.get("NanoCpus") or 0) / 1e9
            memory = (host_config.get("Memory") or 0) // (1024 * 1024)
        state.add(labels.get(LABEL_TENANT) or None, Use(1, cpus, memory))
        if all(key):
            state.sessions.add(key)
    return state


def _reserved(labels: dict[str, str]) -> tuple[float | None, int | None]:
    try:
        return float(labels[LABEL_LIMITS_CPUS]), int(labels[LABEL_LIMITS_MEMORY])
    except (KeyError, ValueError):
        return None, None


def connect(url: str | None) -> Any:
    """A Docker SDK client for a host URL (None: the local engine / DOCKER_HOST)."""
    import docker

    if url is None:
        return docker.from_env()
    if url.startswith("ssh://"):
        return docker.DockerClient(base_url=url, use_ssh_client=True)
    return docker.DockerClient(base_url=url)
