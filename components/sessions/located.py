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


def verify(record: Record, manifest: Mapping[str, Any], client: Any) -> None:
    """Raise :class:`ManifestMismatch` unless the engine behind ``client`` runs the
    session's container (its registered engine name and labels) with the manifest's id
    and port mappings."""
    import docker.errors  # with the client: only verbs that act on an engine load it

    where = f"session {record.session_id!r}"
    fix = f"`dockyard refresh {record.session_id}` rewrites it from the engine"
    name = record.environment_id
    try:
        container = client.containers.get(name)
    except docker.errors.NotFound:
        raise ManifestMismatch(
            f"{where}: its container {name} is not on its engine ({record.host}); "
            f"refresh or destroy the session"
        ) from None
    labels = container.attrs.get("Config", {}).get("Labels") or {}
    problems = []
    if labels.get(LABEL_SESSION) != record.session_id or labels.get(LABEL_MANAGED) != MANAGED_VALUE:
        problems.append(f"the engine's {name} is not labelled as this session's")
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
