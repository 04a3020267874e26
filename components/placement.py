"""Which Docker host each environment of a several-host stack runs on.

Decided when the program runs (preview included), deterministically, so the plan shows
it: an environment that names a ``host`` goes there; one that already runs on a host
(its stack and session labels found on that engine) stays there — re-running never
moves a placed environment; a new one goes to the host with the most quota headroom
left after the environments placed before it in the stack's order (ties: host name).
Headroom is read from each engine (containers labelled ``dockyard.managed=true``, every
stack and process), the same count the session quotas use.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

from .capacity import EngineState, Use, connect, count
from .config import Environment, QuotaCaps, StackConfig
from .errors import QuotaExceeded


class PlacementError(QuotaExceeded):
    """No host can take an environment; the message names each host's use."""


def read_engine(url: str) -> EngineState:
    """An engine's dockyard containers (the only engine access placement makes)."""
    client = connect(url)
    try:
        return count(client)
    finally:
        client.close()


def _headroom(caps: QuotaCaps, use: Use, request: Use) -> float | None:
    """The smallest fraction of a cap left after ``request`` (None: a cap is passed);
    1.0 for a host without caps, less the share of environments it already runs."""
    after = use.plus(request)
    fractions = []
    for cap, value in (
        (caps.environments, after.environments),
        (caps.cpus, after.cpus),
        (caps.memory, after.memory),
    ):
        if cap is None:
            continue
        if value > cap + 1e-9:
            return None
        fractions.append((cap - value) / cap if cap else 0.0)
    return min(fractions) if fractions else 1.0 - after.environments / 1e6


def place(cfg: StackConfig, read: Callable[[str], EngineState] | None = None) -> dict[str, str]:
    """Session id -> host name for every environment of ``cfg`` (``dockerHosts`` set);
    ``read`` gives an engine's state by URL (default: ask the engine). The states ``read``
    returns are not changed: placement counts the environments it places on copies."""
    read = read or read_engine
    hosts = dict(sorted(cfg.docker_hosts.items()))
    engines: Mapping[str, EngineState] = {
        name: copy.deepcopy(read(url)) for name, url in hosts.items()
    }
    placed: dict[str, str] = {}
    for env in cfg.environments:
        if env.host is not None:
            choice = env.host
        else:
            here = [n for n, e in engines.items() if (cfg.stack, env.session_id) in e.sessions]
            choice = here[0] if here else _best(cfg, env, engines)
        placed[env.session_id] = choice
        if (cfg.stack, env.session_id) not in engines[choice].sessions:
            limits = cfg.limits_of(env)
            engines[choice].add(env.tenant, Use(1, limits.cpus, limits.memory))
            engines[choice].sessions.add((cfg.stack, env.session_id))
    return placed


def _best(cfg: StackConfig, env: Environment, engines: Mapping[str, EngineState]) -> str:
    limits = cfg.limits_of(env)
    request = Use(1, limits.cpus, limits.memory)
    scores: dict[str, float] = {}
    refusals = []
    for name, engine in engines.items():
        caps = cfg.quotas.for_host(name)
        score = _headroom(caps, engine.total, request)
        tenant_caps = cfg.quotas.tenants.get(env.tenant or "")
        if score is not None and tenant_caps is not None:
            tenant_score = _headroom(tenant_caps, engine.use.get(env.tenant, Use()), request)
            score = None if tenant_score is None else min(score, tenant_score)
        if score is None:
            refusals.append(f"{name} ({engine.total.environments} environments in use)")
        else:
            scores[name] = score
    if not scores:
        raise PlacementError(
            f"environment {env.session_id}: no Docker host has quota headroom for "
            f"{limits.cpus:g} CPUs and {limits.memory} MB: " + ", ".join(refusals)
        )
    return max(sorted(scores), key=lambda n: scores[n])
