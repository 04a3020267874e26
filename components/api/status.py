"""A session's state on its engine (status and health), read with the Docker SDK.

The service layer has no such read yet; this is its one place in the face until
``dockyard.sessions`` grows a ``status`` verb (then this module goes)."""

from __future__ import annotations

from typing import Any

import docker.errors

from ..capacity import connect


def engine_state(container_id: str, host: str) -> dict[str, Any]:
    """``{"status": running|exited|…|missing|unknown, "health": healthy|…|None}``."""
    try:
        client = connect(None if host == "local" else host)
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
