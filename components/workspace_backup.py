#!/usr/bin/env python3
"""The host's ``workspace-backup`` command: scheduled backups of every workspace on this
Docker host, retention and checks where due, and the hook the idle monitor and the refresh
path run before they stop or recreate an environment.

A face over the restic engine (:mod:`dockyard.backup`): argument parsing, the host
configuration (``/etc/dockyard/workspace-backup.json``, the workspace_backup role's), the
schedule's state and exit codes (0 done, 1 failed, 2 invalid configuration). Each backup
and check it makes is a line of the host's audit trail (actor ``host:workspace-backup``).

Standard library only: ``roles/workspace_backup`` installs it with the package's host
modules (``<library>/dockyard/``) and a launcher, ``workspace-backup``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .backup import (
    DEFAULT_CACHE_DIR,
    DEFAULT_CREDENTIALS_DIR,
    DEFAULT_IMAGE,
    DEFAULT_RESTIC,
    READ_DATA_SUBSET,
    REASONS,
    BackupError,
    BackupResult,
    Backups,
    Busy,
    ConfigError,
    Settings,
    Workspace,
    check_selector,
)
from .contract import LABEL_SESSION, LABEL_STACK, LABEL_TENANT, MANAGED_SELECTOR
from .errors import DockyardError, shown
from .files import read_json_object, write_json_atomic
from .host.audit_trail import audit as host_audit

# The role's defaults (roles/workspace_backup/defaults/main.yml) are the same values;
# tests/unit/test_backup_role.py keeps them equal.
HOST_DEFAULTS: dict[str, Any] = {
    "repository": "",
    "region": "",
    "credentials_dir": DEFAULT_CREDENTIALS_DIR,
    "cache_dir": DEFAULT_CACHE_DIR,
    "image": DEFAULT_IMAGE,
    "restic": DEFAULT_RESTIC,
    "label": MANAGED_SELECTOR,
    "keep_last": 24,
    "keep_daily": 7,
    "keep_weekly": 4,
    "maintenance_hours": 24,
    "read_data_subset": "",
}


def load_host_config(path: str | None) -> tuple[Settings, dict[str, Any]]:
    """The host command's configuration: HOST_DEFAULTS, then the JSON object in ``path``."""
    config = dict(HOST_DEFAULTS)
    if path:
        config.update(read_json_object(path, ConfigError))
    source = path or "config"
    unknown = sorted(set(config) - set(HOST_DEFAULTS))
    if unknown:
        raise ConfigError(f"{source}: unknown keys {unknown} (allowed: {', '.join(HOST_DEFAULTS)})")
    for key, default in HOST_DEFAULTS.items():
        value = config[key]
        if isinstance(default, int) and (not isinstance(value, int) or isinstance(value, bool)):
            raise ConfigError(
                f"{source}: {key}: {shown(value)} is not allowed (allowed: a whole number)"
            )
        if isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"{source}: {key}: {shown(value)} is not allowed (allowed: a string)")
    for key in ("keep_last", "keep_daily", "keep_weekly"):
        if not 0 <= config[key] <= 100_000:
            raise ConfigError(f"{source}: {key}: {config[key]} is not allowed (allowed: 0-100000)")
    if sum(config[k] for k in ("keep_last", "keep_daily", "keep_weekly")) == 0:
        raise ConfigError(
            f"{source}: keep_last, keep_daily and keep_weekly are all 0 (allowed: at least one above 0, or every snapshot would go)"
        )
    if not 1 <= config["maintenance_hours"] <= 24 * 365:
        raise ConfigError(
            f"{source}: maintenance_hours: {config['maintenance_hours']} is not allowed (allowed: 1-8760)"
        )
    if not READ_DATA_SUBSET.fullmatch(config["read_data_subset"]):
        raise ConfigError(
            f"{source}: read_data_subset: {config['read_data_subset']!r} is not allowed "
            "(allowed: '' for none, a percentage such as 5% or a fraction such as 1/10)"
        )
    check_selector(config["label"])
    settings = Settings.from_mapping(config)
    return settings, config


@dataclass
class HostState:
    """What the scheduled runs remember (``<cache_dir>/state.json``), per ``stack/session``."""

    last_success: dict[str, float] = field(default_factory=dict)
    last_failure: dict[str, str] = field(default_factory=dict)
    last_maintenance: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> HostState:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return cls()
        known = {k: data.get(k) or {} for k in ("last_success", "last_failure", "last_maintenance")}
        return cls(**known)

    def save(self, path: Path) -> None:
        write_json_atomic(path, asdict(self), 0o600, sort_keys=True)


def _engine_time(value: str) -> float:
    base = value.partition(".")[0]
    try:
        moment = datetime.fromisoformat(base.rstrip("Z")).replace(tzinfo=UTC)
    except ValueError:
        return 0.0
    return moment.timestamp()


HostAudit = Callable[..., None]
"""Writes one line of the host's audit trail (:func:`dockyard.host.audit_trail.audit`)."""
ACTOR = "host:workspace-backup"


def _audit_line(
    audit: HostAudit | None,
    action: str,
    workspace: Workspace,
    started: float,
    error: BaseException | None = None,
    detail: str = "",
) -> None:
    if audit is None:
        return
    labels = {LABEL_SESSION: workspace.session, LABEL_STACK: workspace.repo.stack}
    if workspace.tenant:
        labels[LABEL_TENANT] = workspace.tenant
    audit(
        action,
        actor=ACTOR,
        labels=labels,
        result="error" if error else "ok",
        duration_ms=round((time.monotonic() - started) * 1000),
        detail=str(error) if error else detail,
    )


def scheduled_run(
    backups: Backups,
    config: Mapping[str, Any],
    now: Callable[[], float] = time.time,
    audit: HostAudit | None = None,
) -> int:
    """Back up every workspace (those of stopped environments only when they changed
    since the last backup), then retention and check where due. A failure is reported
    and retried on the next run; returns the number of failures. Each backup and check
    is a line of the host's audit trail (``audit``)."""
    state_file = Path(backups.settings.cache_dir) / "state.json"
    state = HostState.load(state_file)
    failures = 0
    for workspace in backups.workspaces(str(config["label"])):
        key = str(workspace.repo)
        last = state.last_success.get(key, 0.0)
        stopped = workspace.container and not workspace.running and workspace.finished_at
        if stopped and _engine_time(workspace.finished_at) < last:
            print(f"workspace-backup: {key}: unchanged since its last backup (stopped)")
            continue
        started = time.monotonic()
        try:
            result = backups.backup(workspace, "scheduled", wait_s=0)
        except Busy as error:
            print(f"workspace-backup: {key}: skipped: {error}")
            continue
        except BackupError as error:
            failures += 1
            state.last_failure[key] = f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} {error}"[:800]
            print(f"ERROR: workspace-backup: {error}", file=sys.stderr)
            _audit_line(audit, "backup", workspace, started, error)
            continue
        _audit_line(audit, "backup", workspace, started, detail=_described(result))
        state.last_success[key] = now()
        state.last_failure.pop(key, None)
        print(
            f"workspace-backup: {key}: snapshot {result.snapshot} ({result.files} files, "
            f"{result.bytes} bytes, {result.added_bytes} new) in {result.seconds:g} s"
        )
        if (
            now() - state.last_maintenance.get(key, 0.0)
            >= float(config["maintenance_hours"]) * 3600
        ):
            started = time.monotonic()
            try:
                checked = backups.maintain(
                    workspace.repo,
                    int(config["keep_last"]),
                    int(config["keep_daily"]),
                    int(config["keep_weekly"]),
                    str(config["read_data_subset"]),
                )
            except BackupError as error:
                failures += 1
                print(f"ERROR: workspace-backup: {error}", file=sys.stderr)
                _audit_line(audit, "backup-check", workspace, started, error)
                continue
            state.last_maintenance[key] = now()
            verdict = "check clean" if checked.ok else f"CHECK FAILED: {checked.output}"
            _audit_line(
                audit,
                "backup-check",
                workspace,
                started,
                None if checked.ok else BackupError(verdict),
                f"retention removed {checked.removed_snapshots} snapshots; {verdict}",
            )
            print(
                f"workspace-backup: {key}: retention removed {checked.removed_snapshots} snapshots; {verdict}"
            )
            if not checked.ok:
                failures += 1
    with contextlib.suppress(OSError):
        state.save(state_file)
    return failures


def _described(result: BackupResult) -> str:
    return (
        f"{result.reason}: snapshot {result.snapshot}, {result.files} files, {result.bytes} bytes"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workspace-backup", description="dockyard encrypted workspace backups (restic)"
    )
    parser.add_argument("--config", help="JSON configuration (the workspace_backup role's)")
    parser.add_argument("--check-config", action="store_true", help="validate and exit")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="scheduled: back up every workspace, retention and check")
    hook = commands.add_parser("hook", help="back up one environment's workspace now")
    hook.add_argument("container", help="the environment's container name or id")
    hook.add_argument("--reason", default="manual", choices=REASONS)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """The command; its exit code is the error root's (0 done, 1 failed, 2 invalid
    configuration, 4 no such container or workspace)."""
    args = build_parser().parse_args(argv)
    env = dict(os.environ if environ is None else environ)
    try:
        settings, config = load_host_config(args.config)
        if args.check_config:
            return 0
        backups = Backups(settings, env, log=lambda line: print(f"workspace-backup: {line}"))
        if args.command == "hook":
            workspace = backups.workspace_of_container(args.container)
            started = time.monotonic()
            try:
                result = backups.backup(workspace, args.reason)
            except BackupError as error:
                _audit_line(host_audit, "backup", workspace, started, error)
                raise
            _audit_line(host_audit, "backup", workspace, started, detail=_described(result))
            print(
                f"workspace-backup: {workspace.repo}: snapshot {result.snapshot} before "
                f"{args.reason} ({result.files} files, {result.bytes} bytes)"
            )
            return 0
        if args.command == "run":
            return 1 if scheduled_run(backups, config, audit=host_audit) else 0
        build_parser().print_usage(sys.stderr)
        return 2
    except DockyardError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
