"""A session request from the command line: a ``--request`` JSON file (or stdin) with the
flags of ``dockyard up`` over it. The service layer validates it (every problem at once);
a request with no session id at all (no ``-s``, no ``sessionId`` in the file) is refused
here first, as :class:`SessionFlagMissing`, naming the flag a user types."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..errors import InvalidInput

SESSION_FLAG_MISSING = (
    "--session (-s): missing (allowed: a session id, e.g. -s my-session, or sessionId in the "
    "--request file)"
)


class SessionFlagMissing(InvalidInput):
    """``dockyard up`` was given no session id: no ``-s`` and no ``sessionId`` in the
    ``--request`` file (the same refusal locally and with ``--server``). ``request``: what
    the flags made, so the request's other problems can be listed with this one."""

    def __init__(self, request: dict[str, Any], others: list[str] | None = None) -> None:
        problems = [SESSION_FLAG_MISSING, *(others or [])]
        super().__init__(SESSION_FLAG_MISSING, problems)
        self.request = request


# Stands in for the missing id while the rest of the request is checked: its problems are
# listed with the missing flag (every problem at once), never a problem of its own.
PLACEHOLDER_SESSION = "session-id-not-given"


def other_problems(request: dict[str, Any], plan: Callable[[dict[str, Any]], object]) -> list[str]:
    """The problems ``plan`` (the service's validation) finds in ``request`` once a
    placeholder stands in for its missing session id."""
    try:
        plan({**request, "sessionId": PLACEHOLDER_SESSION})
    except ConfigError as error:
        return [p for p in error.problems if PLACEHOLDER_SESSION not in p]
    return []


def read_request(path: str) -> dict[str, Any]:
    """The JSON object in ``path`` (``-``: stdin)."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            "request", [f"--request {path}: cannot be read ({exc.strerror})"]
        ) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            "request", [f"--request {path}: not JSON (line {exc.lineno}: {exc.msg})"]
        ) from None
    if not isinstance(document, dict):
        raise ConfigError("request", [f"--request {path}: not a JSON object"])
    return document


def request_from_flags(
    request_file: str | None,
    session: str | None,
    cwd: str | None,
    backend: str | None,
    image: str | None,
    ports: list[int],
    volumes: list[str],
    env: list[str],
    secrets: list[str],
    tenant: str | None,
    profile: str | None,
) -> dict[str, Any]:
    """The request file's object (or an empty one) with each given flag set over it;
    :class:`SessionFlagMissing` when neither names the session."""
    request = read_request(request_file) if request_file else {}
    container = (
        dict(request.get("container") or {}) if isinstance(request.get("container"), dict) else {}
    )
    for key, value in (
        ("sessionId", session),
        ("backend", backend),
        ("tenant", tenant),
        ("profile", profile),
    ):
        if value is not None:
            request[key] = value
    if cwd is not None or "cwd" not in request:
        request["cwd"] = str(Path(cwd or os.getcwd()).resolve())
    if image is not None:
        container["image"] = image
    if ports:
        container["ports"] = ports
    if volumes:
        container["volumes"] = volumes
    if env:
        variables = dict(container.get("env") or {})
        for item in env:
            name, sep, value = item.partition("=")
            if not sep:
                raise ConfigError("request", ["--env: expects NAME=value (allowed: NAME=value)"])
            variables[name] = value
        container["env"] = variables
    if secrets:
        request["secrets"] = secrets
    if container or "container" in request:
        request["container"] = container
    if "sessionId" not in request:
        raise SessionFlagMissing(request)
    return request
