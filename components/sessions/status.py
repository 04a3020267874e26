"""A session's state on its engine (status and health), read with the Docker SDK: the
one place the faces (``GET /api/sessions/{id}``, the session-ready events, the dashboard)
ask an engine how its containers are doing."""

from __future__ import annotations

from typing import Any

import docker.errors

from ..capacity import connect
from ..contract import LABEL_SESSION

HEALTH_WORDS = (("(healthy)", "healthy"), ("(unhealthy)", "unhealthy"), ("(health: ", "starting"))
"""How the engine's list writes a container's health in its status line."""


def _client(host: str) -> Any:
    """A Docker client for a record's host (``local``: this machine's engine)."""
    return connect(None if host == "local" else host)


def engine_state(container_id: str, host: str) -> dict[str, Any]:
    """``{"status": running|exited|…|missing|unknown, "health": healthy|…|None}``."""
    try:
        client = _client(host)
    except docker.errors.DockerException:
        return {"status": "unknown", "health": None}
    try:
        state = client.api.inspect_container(container_id)["State"]
    except docker.errors.NotFound:
        return {"status": "missing", "health": None}
    except docker.errors.DockerException:
        return {"status": "unknown", "health": None}
    finally:
        client.close()
    return {"status": state.get("Status"), "health": (state.get("Health") or {}).get("Status")}


def engine_states(host: str) -> dict[str, dict[str, Any]] | None:
    """Every dockyard session container's state on one engine, by container name, in ONE
    list call (a table's rows would otherwise cost an inspect each); None when the engine
    cannot be asked (every state is unknown)."""
    try:
        client = _client(host)
    except docker.errors.DockerException:
        return None
    try:
        listed = client.api.containers(all=True, filters={"label": LABEL_SESSION})
    except docker.errors.DockerException:
        return None
    finally:
        client.close()
    states = {}
    for item in listed:
        status = str(item.get("Status") or "")
        health = next((h for word, h in HEALTH_WORDS if word in status), None)
        for name in item.get("Names") or []:
            states[name.lstrip("/")] = {"status": item.get("State"), "health": health}
    return states


def container_logs(container_id: str, host: str, tail: int) -> str:
    """A container's last ``tail`` lines (what ``dockyard logs --tail N`` prints), or a
    line saying why they cannot be read."""
    try:
        client = _client(host)
        try:
            data = client.api.logs(container_id, tail=tail, timestamps=False)
        finally:
            client.close()
    except docker.errors.DockerException as exc:
        return f"(the logs cannot be read: {type(exc).__name__})"
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
