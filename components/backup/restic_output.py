"""What restic says, read: its JSON output and, from its error text, which failure it is
(standard library only)."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

from .model import (
    BackupError,
    Busy,
    PasswordError,
    Repo,
    Settings,
    StorageError,
    Uninitialised,
)


def last(text: str, lines: int = 3) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    # restic says where it reads the password from: noise in an error message.
    kept = [line for line in kept if not line.startswith("reading repository password")]
    return " | ".join(kept[-lines:])[:600]


def line_with(text: str, markers: Sequence[str]) -> str:
    """The first line of ``text`` naming one of ``markers`` (restic's reason)."""
    for line in text.splitlines():
        if any(marker in line for marker in markers):
            return line.strip().removeprefix("Fatal: ")[:300]
    return last(text, 1)


UNINITIALISED = ("Is there a repository at the following location?",)
UNREACHABLE = (
    "connection refused",
    "no such host",
    "i/o timeout",
    "network is unreachable",
    "no route to host",
    "tls: ",
    "x509: ",
    "connection reset",
    "Client.Timeout",
    "EOF",
)
REFUSED = (
    "Access Denied",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "Access Key Id you provided does not exist",
    "InvalidToken",
    "ExpiredToken",
)


def error(
    settings: Settings, repo: Repo, action: str, result: subprocess.CompletedProcess[str]
) -> BackupError:
    """The failure restic's ``result`` of ``action`` on ``repo`` is, as an error naming
    the session, the storage endpoint (never a key) and what was (not) changed."""
    text = result.stderr or ""
    head = f"session {repo.session} (stack {repo.stack}): {action} failed"
    url = repo.url(settings)
    if "wrong password or no key found" in text:
        return PasswordError(
            f"{head}: the repository {url} does not open with the password in "
            f"{repo.password_file(settings)} (wrong password or no key found); "
            "nothing was changed"
        )
    if any(marker in text for marker in UNINITIALISED) and not any(
        marker in text for marker in (*UNREACHABLE, *REFUSED)
    ):
        return Uninitialised(f"{head}: no repository at {url} yet")
    if any(marker in text for marker in REFUSED):
        return StorageError(
            f"{head}: the storage at {settings.endpoint} refused the keys "
            f"({line_with(text, REFUSED)}); nothing was changed"
        )
    if any(marker in text for marker in UNREACHABLE):
        return StorageError(
            f"{head}: the storage at {settings.endpoint} is unreachable "
            f"({line_with(text, UNREACHABLE)}); the workspace is untouched"
        )
    if "repository is already locked" in text:
        return Busy(f"{head}: the repository is locked by another restic ({last(text, 2)})")
    if result.returncode in (137, -9):
        return BackupError(f"{head}: restic was killed (SIGKILL) before it finished")
    return BackupError(f"{head} (restic exit {result.returncode}): {last(text)}")


def json_stream(text: str) -> Iterator[dict[str, Any]]:
    """The JSON objects in restic's --json output (one after another, whitespace or not;
    restic's own notes such as "reading repository password from stdin" are skipped)."""
    for value in _json_stream_any(text):
        if isinstance(value, dict):
            yield value


def json_list(text: str) -> list[dict[str, Any]]:
    for value in _json_stream_any(text):
        if isinstance(value, list):
            return [v for v in value if isinstance(v, dict)]
    return []


def _json_stream_any(text: str) -> Iterator[Any]:
    decoder = json.JSONDecoder()
    index = 0
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        try:
            value, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            index = text.find("\n", index) + 1 or len(text)
            continue
        yield value


def summary(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        with contextlib.suppress(json.JSONDecodeError):
            message = json.loads(line)
            if isinstance(message, dict) and message.get("message_type") == "summary":
                return message
    return {}
