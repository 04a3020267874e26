"""Which Docker host an environment of a several-host stack runs on, beside its manifest.

Manifest contract v1 has exactly its keys, so the host cannot go into it; it goes into a
sibling file ``<sessionId>.host.json`` next to the manifest (and into the container's
``dockyard.host`` label)::

    {"version": 1, "sessionId": "alice-api", "host": "east", "dockerHost": "ssh://agent@east"}

The manifest inventory plugin reads it to group environments by host and to reach them
through that host's engine. Written and removed by the program like the manifest.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema

from .files import write_json_atomic

SUFFIX = ".host.json"
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "dockyard environment host (sibling of a v1 manifest)",
    "type": "object",
    "additionalProperties": False,
    "required": ["version", "sessionId", "host", "dockerHost"],
    "properties": {
        "version": {"const": 1},
        "sessionId": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$(?!\\n)"},
        "host": {"type": "string", "pattern": "^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$(?!\\n)"},
        "dockerHost": {"type": "string", "minLength": 1, "maxLength": 512},
    },
}


def path_for(manifest_path: str) -> str:
    return manifest_path.removesuffix(".json") + SUFFIX


def validate(data: Mapping[str, Any]) -> None:
    jsonschema.validate(dict(data), SCHEMA)


def write(path: str | os.PathLike[str], data: Mapping[str, Any]) -> None:
    validate(data)
    write_json_atomic(path, dict(data))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    path = os.environ.get("DOCKYARD_HOSTFILE_PATH", "")
    if args not in (["write"], ["remove"]) or not path.startswith("/"):
        print(
            "usage: python -m dockyard.hostfile write|remove (reads DOCKYARD_HOSTFILE, an "
            "absolute DOCKYARD_HOSTFILE_PATH)",
            file=sys.stderr,
        )
        return 2
    try:
        if args == ["write"]:
            write(path, json.loads(os.environ.get("DOCKYARD_HOSTFILE", "")))
        else:
            Path(path).unlink(missing_ok=True)
    except (jsonschema.ValidationError, json.JSONDecodeError, OSError) as exc:
        print(f"ERROR: {path}: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
