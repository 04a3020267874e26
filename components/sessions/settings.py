"""Where sessions keep their state and how a host is configured for them.

Host settings are the stack keys of ``docs/stacks.md``, the namespace prefix optional
(``dockerHost``, ``image``, ``quotas``, ``profiles``, ``limits``…), in a YAML file:
``$DOCKYARD_CONFIG``, else ``~/.config/dockyard/settings.yaml`` if it exists, else none.
State (Pulumi's file backend, the session index, quota reservations) lives in
``$DOCKYARD_STATE_DIR``, else ``~/.local/state/dockyard``; the audit log in
``$DOCKYARD_AUDIT_LOG``, else ``<state>/audit.jsonl``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, host_settings
from ..errors import Failed

IMAGE_RECORD = "image.json"
"""The state file ``dockyard image build`` writes: the host's built image reference."""


class StateUnusable(Failed):
    """The state directory cannot be created, read or written."""


def usable_state(where: Paths) -> Paths:
    """``where`` once its state directory exists and this user can read and write it
    (created with mode 0700 if missing); else :class:`StateUnusable` saying how to fix it."""
    try:
        where.state.mkdir(parents=True, exist_ok=True, mode=0o700)
        usable = os.access(where.state, os.R_OK | os.W_OK | os.X_OK)
        reason = "permission denied"
    except OSError as exc:
        usable, reason = False, exc.strerror or type(exc).__name__
    if not usable:
        raise StateUnusable(
            f"the state directory {where.state} cannot be used ({reason}); set "
            "DOCKYARD_STATE_DIR to a directory you can write, or fix its permissions"
        )
    return where


@dataclass(frozen=True)
class Paths:
    state: Path
    config_file: Path | None
    audit_log: Path
    pulumi_backend: str
    passphrase_file: Path

    @property
    def index(self) -> Path:
        return self.state / "sessions"

    @property
    def reservations(self) -> Path:
        return self.state / "reservations"


def paths(environ: Mapping[str, str] | None = None) -> Paths:
    env = os.environ if environ is None else environ
    home = Path(env.get("HOME") or Path.home())
    state = Path(env.get("DOCKYARD_STATE_DIR") or home / ".local" / "state" / "dockyard")
    config = env.get("DOCKYARD_CONFIG")
    default_config = home / ".config" / "dockyard" / "settings.yaml"
    config_file = Path(config) if config else (default_config if default_config.is_file() else None)
    return Paths(
        state=state,
        config_file=config_file,
        audit_log=Path(env.get("DOCKYARD_AUDIT_LOG") or state / "audit.jsonl"),
        # The same defaults as `make up` (Pulumi.yaml, Makefile): local state, passphrase.
        pulumi_backend=env.get("PULUMI_BACKEND_URL") or "file://~/.pulumi-dockyard",
        passphrase_file=Path(
            env.get("PULUMI_CONFIG_PASSPHRASE_FILE")
            or home / ".config" / "dockyard" / "pulumi-passphrase"
        ),
    )


def load_settings(where: Paths) -> dict[str, Any]:
    """The host settings mapping (unvalidated: a request is judged together with them)."""
    if where.config_file is None:
        return {}
    try:
        document = yaml.safe_load(where.config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            "host settings", [f"{where.config_file}: no such file (allowed: a YAML mapping)"]
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            "host settings", [f"{where.config_file}: not YAML{at} (allowed: a YAML mapping)"]
        ) from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(
            "host settings",
            [f"{where.config_file}: a {type(document).__name__} (allowed: a YAML mapping)"],
        )
    return host_settings(document)
