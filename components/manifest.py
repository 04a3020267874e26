"""Manifest contract v1 (R-MAN-1, R-MAN-2): built from resolved outputs, validated
against the JSON Schema shipped beside this module, written atomically.

Readers accept every manifest the schema accepts (the contract's own reference example
included, whose container id is ``abc123``); dockyard's writer is stricter and writes
only what the engine reported: the full container id, and the container name as the
environment id.

``python -m dockyard.manifest write|remove`` is what the environment's
``local.Command`` runs: the manifest and its path arrive in the environment variables
``DOCKYARD_MANIFEST`` and ``DOCKYARD_MANIFEST_PATH``, never in shell text.
"""

# No `from __future__ import annotations`: the component provider reads these TypedDicts
# (their annotations must be real types, not strings, for its schema analyzer).

import json
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, TypedDict

import jsonschema

from .errors import InvalidInput
from .files import write_json_atomic

SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")
CONTAINER_CWD = "/workspace"
FULL_CONTAINER_ID = re.compile(r"[0-9a-f]{64}", re.ASCII)


class ManifestError(InvalidInput, ValueError):
    """A manifest does not satisfy contract v1."""


class PortMapping(TypedDict):
    """A published port as the engine resolved it."""

    containerPort: int
    hostPort: int


class ManifestContainer(TypedDict):
    """The agent container."""

    id: str
    name: str
    cwd: str
    portMappings: list[PortMapping]


class ManifestRequest(TypedDict):
    """What the environment asked for."""

    ports: list[int]
    volumes: list[str]
    env: list[str]
    """Names only: variables and secrets."""


class Manifest(TypedDict):
    """Manifest contract v1: what the environment is and how to reach it."""

    version: int
    environmentId: str
    sessionId: str
    backend: str
    createdAt: str
    cwd: str
    image: str
    container: ManifestContainer
    requested: ManifestRequest


"""Contract v1 (R-MAN-2) as a type: what dockyard writes and the schema validates."""


@cache
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def validate(manifest: Mapping[str, Any], source: str = "manifest") -> None:
    """Raise :class:`ManifestError` naming every violation of the v1 schema."""
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors]
        raise ManifestError(f"{source} is not a valid v1 manifest:\n  " + "\n  ".join(lines))


def check_written(manifest: Mapping[str, Any], source: str = "manifest") -> None:
    """Validate against the schema, then the rules dockyard's writer adds to it; raise
    :class:`ManifestError` naming every violation."""
    validate(manifest, source)
    problems = []
    container = manifest["container"]
    if not FULL_CONTAINER_ID.fullmatch(container["id"]):
        problems.append(
            f"container/id: {container['id']!r} is not allowed (allowed: the engine's full "
            "container id, 64 lowercase hex digits)"
        )
    if manifest["environmentId"] != container["name"]:
        problems.append(
            f"environmentId: {manifest['environmentId']!r} is not allowed (allowed: the "
            f"container name, {container['name']!r})"
        )
    if problems:
        raise ManifestError(
            f"{source} is not a manifest dockyard writes:\n  " + "\n  ".join(problems)
        )


def iso_millis(timestamp: str) -> str:
    """Docker's RFC 3339 time with nanoseconds -> ISO-8601 UTC with milliseconds."""
    match = re.fullmatch(
        r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", timestamp.strip()
    )
    if not match:
        raise ManifestError(f"createdAt: {timestamp!r} is not an RFC 3339 time")
    base, fraction, zone = match.groups()
    parsed = datetime.fromisoformat(
        f"{base}.{(fraction or '0')[:6].ljust(6, '0')}{'+00:00' if zone == 'Z' else zone}"
    )
    return (
        parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{parsed.microsecond // 1000:03d}Z"
    )


def port_mappings(ports: Iterable[Any]) -> list[dict[str, int]]:
    """Container port -> host port as the engine resolved them (provider ``ports`` output)."""
    mappings = []
    for port in ports or []:
        internal = _field(port, "internal")
        external = _field(port, "external")
        if internal is None or not external:
            raise ManifestError(f"port {port!r} has no host port resolved by the engine")
        mappings.append({"containerPort": int(internal), "hostPort": int(external)})
    return sorted(mappings, key=lambda m: m["containerPort"])


def _field(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, Mapping) else getattr(item, name, None)


def build(
    *,
    environment_id: str,
    session_id: str,
    backend: str,
    created_at: str,
    cwd: str,
    image: str,
    container_id: str,
    container_name: str,
    ports: Iterable[Any],
    requested_ports: Sequence[int],
    requested_volumes: Sequence[str],
    requested_env: Sequence[str],
) -> dict[str, Any]:
    manifest = {
        "version": 1,
        "environmentId": environment_id,
        "sessionId": session_id,
        "backend": backend,
        "createdAt": iso_millis(created_at),
        "cwd": cwd,
        "image": image,
        "container": {
            "id": container_id,
            "name": container_name,
            "cwd": CONTAINER_CWD,
            "portMappings": port_mappings(ports),
        },
        "requested": {
            "ports": list(requested_ports),
            "volumes": list(requested_volumes),
            "env": list(dict.fromkeys(requested_env)),
        },
    }
    check_written(manifest, f"manifest of {session_id}")
    return manifest


_VALID_TEXTS: dict[str, str] = {}
"""Path -> the text last found valid there. Checking the schema is ~90% of listing
sessions; a text equal to one already checked is not checked again (keyed on the text
itself, not on file times, which whoever can write the file can set)."""
_VALID_TEXTS_MAX = 4096


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a manifest file; errors name the file."""
    key = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
        manifest = json.loads(text)
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such manifest file") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if _VALID_TEXTS.get(key) != text:
        _VALID_TEXTS.pop(key, None)
        validate(manifest, str(path))
        if len(_VALID_TEXTS) >= _VALID_TEXTS_MAX:
            _VALID_TEXTS.clear()
        _VALID_TEXTS[key] = text
    return manifest


def write(path: str | os.PathLike[str], manifest: Mapping[str, Any]) -> None:
    """Check as dockyard writes (:func:`check_written`), then replace ``path``
    atomically (readers never see half a file)."""
    check_written(manifest, str(path))
    write_json_atomic(path, dict(manifest))


def remove(path: str | os.PathLike[str]) -> None:
    Path(path).unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in (["write"], ["remove"]):
        print(
            "usage: python -m dockyard.manifest write|remove  (reads DOCKYARD_MANIFEST, DOCKYARD_MANIFEST_PATH)",
            file=sys.stderr,
        )
        return 2
    path = os.environ.get("DOCKYARD_MANIFEST_PATH", "")
    if not path.startswith("/"):
        print(f"ERROR: DOCKYARD_MANIFEST_PATH={path!r} is not an absolute path", file=sys.stderr)
        return 2
    try:
        if args == ["write"]:
            write(path, json.loads(os.environ.get("DOCKYARD_MANIFEST", "")))
            print(path)
        else:
            remove(path)
    except (ManifestError, json.JSONDecodeError, OSError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
