"""The manifest file on the host, declared once for every backend (R-MAN-1).

Writing and removing it are resources (``pulumi_command.local.Command``), so ``pulumi
preview`` shows them and ``destroy`` undoes them; the manifest and its path reach the
command as environment values, never as shell text.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pulumi
import pulumi_command as command

from . import hostfile

# Removing the manifest is one `rm` (the path arrives in the environment, never in the
# shell text): a Python start per environment, jsonschema included, was most of the time
# a parallel teardown of many environments took.
MANIFEST_DELETE = (
    'case "$DOCKYARD_MANIFEST_PATH" in /*) exec rm -f -- "$DOCKYARD_MANIFEST_PATH" ;; '
    "*) echo \"ERROR: DOCKYARD_MANIFEST_PATH='$DOCKYARD_MANIFEST_PATH' is not an absolute path\""
    " >&2; exit 2 ;; esac"
)
# The interpreter running the program has dockyard installed: `-m dockyard.<module>`
# resolves from any working directory.
_PYTHON = shlex.quote(sys.executable)
_WORKDIR = str(Path(__file__).resolve().parents[1])


def manifest_path(manifest_dir: str, session_id: str) -> str:
    """Where a session's manifest goes: ``<manifest_dir>/<sessionId>.json``."""
    return f"{manifest_dir.rstrip('/')}/{session_id}.json"


def declare_manifest_file(
    name: str, manifest: pulumi.Output[Mapping[str, Any]], path: str, opts: pulumi.ResourceOptions
) -> command.local.Command:
    """``<name>-manifest``: writes ``manifest`` (validated) to ``path``; removes it on destroy."""
    return command.local.Command(
        f"{name}-manifest",
        create=f"{_PYTHON} -m {__package__}.manifest write",
        delete=MANIFEST_DELETE,
        dir=_WORKDIR,
        environment={
            "DOCKYARD_MANIFEST": manifest.apply(json.dumps),
            "DOCKYARD_MANIFEST_PATH": path,
        },
        opts=opts,
    )


def declare_host_file(
    name: str,
    session_id: str,
    host_name: str,
    docker_host: str | None,
    manifest_file: str,
    opts: pulumi.ResourceOptions,
) -> command.local.Command:
    """``<name>-host``: the manifest's sibling naming the engine that runs the session."""
    writer = f"{_PYTHON} -m {__package__}.hostfile"
    return command.local.Command(
        f"{name}-host",
        create=f"{writer} write",
        delete=f"{writer} remove",
        dir=_WORKDIR,
        environment={
            "DOCKYARD_HOSTFILE": json.dumps(
                {
                    "version": 1,
                    "sessionId": session_id,
                    "host": host_name,
                    "dockerHost": docker_host or "",
                }
            ),
            "DOCKYARD_HOSTFILE_PATH": hostfile.path_for(manifest_file),
        },
        opts=opts,
    )
