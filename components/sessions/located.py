"""A session's manifest checked against its engine before a host tool acts on it.

The manifest file lives in the project directory, which an environment may see; host tools
(attach, ssh, logs) take what they act on from the registry and the engine's own labels,
and refuse a manifest the engine contradicts (issue 25 item 5)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..contract import LABEL_MANAGED, LABEL_SESSION, MANAGED_VALUE
from ..errors import Failed
from .registry import Record


class ManifestMismatch(Failed):
    """The manifest names something the engine does not confirm; the message says what."""


def published(container_attrs: Mapping[str, Any]) -> dict[int, int]:
    """containerPort -> hostPort of a container as the engine reports it (TCP)."""
    ports = (container_attrs.get("NetworkSettings") or {}).get("Ports") or {}
    found: dict[int, int] = {}
    for key, bindings in ports.items():
        port, _, protocol = key.partition("/")
        if protocol == "tcp" and bindings:
            found[int(port)] = int(bindings[0]["HostPort"])
    return found


def engine_container(record: Record, client: Any, missing: type[Exception]) -> Any:
    """The session's container on its engine, by its registered engine name; ``missing``
    (the caller's error kind) when the engine has no such container."""
    import docker.errors  # with the client: only verbs that act on an engine load it

    try:
        return client.containers.get(record.environment_id)
    except docker.errors.NotFound:
        raise missing(
            f"session {record.session_id!r}: its container {record.environment_id} is not on "
            f"its engine ({record.host}); refresh or destroy the session"
        ) from None


def labelled_as_session(record: Record, container: Any) -> bool:
    """Whether the engine's labels make ``container`` this session's (dockyard-managed)."""
    labels = container.attrs.get("Config", {}).get("Labels") or {}
    return bool(
        labels.get(LABEL_SESSION) == record.session_id
        and labels.get(LABEL_MANAGED) == MANAGED_VALUE
    )


def verify(record: Record, manifest: Mapping[str, Any], client: Any) -> None:
    """Raise :class:`ManifestMismatch` unless the engine behind ``client`` runs the
    session's container (its registered engine name and labels) with the manifest's id
    and port mappings."""
    where = f"session {record.session_id!r}"
    fix = f"`dockyard refresh {record.session_id}` rewrites it from the engine"
    container = engine_container(record, client, ManifestMismatch)
    problems = []
    if not labelled_as_session(record, container):
        problems.append(f"the engine's {record.environment_id} is not labelled as this session's")
    if manifest.get("sessionId") != record.session_id:
        problems.append("the manifest names another session")
    if manifest.get("container", {}).get("id") != container.id:
        problems.append("the manifest's container id is not the engine's")
    declared = {
        int(m["containerPort"]): int(m["hostPort"])
        for m in manifest.get("container", {}).get("portMappings", [])
    }
    if declared != published(container.attrs):
        problems.append("the manifest's port mappings are not the engine's")
    if problems:
        raise ManifestMismatch(
            f"{where}: its manifest ({record.manifest_path}) does not match the engine: "
            f"{'; '.join(problems)}; refusing to act on it ({fix})"
        )
