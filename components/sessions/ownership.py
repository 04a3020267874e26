"""Before a session's first create, its engine names must be free or already its own.

Names are one-to-one over (tenant, session) (dockyard.contract), but the engine may hold
objects no registry here knows: a session created before the scheme on another machine
sharing the engine, a stack file's environment, a crashed create of this very session.
The engine adopts an existing named volume silently, so a create whose names hold
another's objects is refused before anything is made (issue 25 item 10), judged by the
labels dockyard puts on everything it creates.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..contract import LABEL_SESSION, LABEL_STACK, LABEL_TENANT
from .registry import NamesTaken
from .request import SessionPlan


def engine_names(plan: SessionPlan) -> Iterator[tuple[str, str]]:
    """(kind, name) of the objects a create would make or adopt by name: the container
    and network, the workspace volume, and the session's own named volumes."""
    prefix = plan.environment_id
    yield "container", prefix
    yield "network", prefix
    yield "volume", f"{prefix}-workspace"
    env = plan.environment
    for volume in env.volumes:
        name = plan.config.volume_name_of(env, volume.source)
        if not volume.is_bind and name.startswith(f"{prefix}-"):
            yield "volume", name


def check(plan: SessionPlan, client: Any) -> None:
    """Raise :class:`NamesTaken` when an object of one of ``plan``'s names exists and is
    not labelled as this session's (``client``: a docker SDK client of its engine)."""
    import docker.errors  # with the client: only when a create runs (start-up of `ls`)

    want = {
        LABEL_SESSION: plan.session_id,
        LABEL_STACK: plan.config.stack,
        LABEL_TENANT: plan.tenant,
    }
    inspect = {
        "container": lambda n: client.api.inspect_container(n)["Config"]["Labels"],
        "network": lambda n: client.api.inspect_network(n)["Labels"],
        "volume": lambda n: client.api.inspect_volume(n)["Labels"],
    }
    for kind, name in engine_names(plan):
        try:
            labels = inspect[kind](name) or {}
        except docker.errors.NotFound:
            continue
        have = {key: labels.get(key) for key in want}
        if have != want:
            owner = (
                f"session {have[LABEL_SESSION]!r} of stack {have[LABEL_STACK]!r}"
                if have[LABEL_SESSION]
                else "no dockyard session"
            )
            raise NamesTaken(
                f"the engine already has a {kind} named {name!r}, and it is {owner}'s: "
                f"session {plan.session_id!r} would adopt it; nothing was created (allowed: "
                "another session id, or remove that object if it is no longer wanted)"
            )
