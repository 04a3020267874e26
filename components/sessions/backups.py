"""Session backups and restores: for the ``dockyard`` command, the sessions API and the
Pulumi program's restore at create. The settings come from the stack configuration
(``dockyard:backup``, or the host settings' ``backup:`` for sessions), the workspace is
found on the engine by its labels, and every backup and restore is one line of the
sessions' audit trail (:func:`dockyard.sessions.audit.recorded`).

The engine itself is :mod:`dockyard.backup` (restic in a helper container; it knows
nothing of sessions). The restore a new environment with ``restore: latest`` runs at create
is :mod:`dockyard.sessions.restore_at_create`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import backup
from ..config import ConfigError, StackConfig, from_host_settings
from ..config import stack_file as read_stack_file
from . import audit
from .registry import SessionNotFound
from .request import SESSIONS_STACK, SessionPlan
from .service import SessionsLike
from .settings import load_settings

Progress = Callable[[str], None]


NOT_CONFIGURED = (
    "dockyard:backup: missing (allowed: a backup repository in the host settings' backup: "
    "or the stack's dockyard:backup — docs/backup.md)"
)


@dataclass(frozen=True)
class Target:
    """A session as backups see it: its configuration and the names it has on the engine."""

    config: StackConfig
    session: str
    tenant: str | None
    stack_name: str
    """The Pulumi stack (the audit's ``stack``)."""
    host: str

    @property
    def repo(self) -> backup.Repo:
        # The stack label the components put on its volumes names the repository.
        return backup.Repo(self.config.stack, self.session)


def settings_of(config: StackConfig) -> backup.Settings:
    if config.backup is None:
        raise ConfigError(config.stack, [NOT_CONFIGURED])
    return backup.Settings.from_mapping(config.backup.model_dump())


def target(
    sessions: SessionsLike, session: str, tenant: str | None = None, stack_file: str | None = None
) -> Target:
    """The session of this machine's registry, or the environment ``session`` of the
    stack file ``stack_file`` (stacks are not in the registry)."""
    if stack_file is not None:
        config = read_stack_file(stack_file, check_secrets=False, label=f"--stack {stack_file}")
        name = config.stack
        envs = [e for e in config.environments if e.session_id == session]
        if not envs:
            raise backup.NotFound(f"stack {name}: no environment {session!r}")
        return Target(config, session, envs[0].tenant, name, config.docker_host or "local")
    try:
        record = sessions.registry.find(session, tenant)
    except SessionNotFound:
        # Destroyed (or made elsewhere): its backups are still there, found by the host
        # settings and the names a session of that tenant has.
        stack = tenant or SESSIONS_STACK
        settings = load_settings(sessions.where)
        config = from_host_settings(settings, stack=stack, cwd=str(sessions.where.state))
        return Target(config, session, tenant, f"{stack}.{session}", "local")
    plan, _ = sessions.plan(
        record.request, dict.fromkeys(_secret_names(record.request), ""), naming=record.naming
    )
    return Target(plan.config, session, record.tenant, record.stack_name, record.host)


def _secret_names(request: dict[str, Any]) -> list[str]:
    names = request.get("secrets")
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def _engine(settings: backup.Settings, progress: Progress) -> backup.Backups:
    return backup.Backups(settings, log=progress)


def _recorded(sessions: SessionsLike, action: str, who: Target) -> Any:
    return audit.recorded(
        sessions.where.audit_log,
        action,
        session=who.session,
        tenant=who.tenant,
        host=who.host,
        stack=who.stack_name,
    )


def run_backup(
    sessions: SessionsLike,
    who: Target,
    reason: str = "manual",
    progress: Progress = lambda _line: None,
) -> backup.BackupResult:
    """Back ``who``'s workspace up now (audited as ``backup``)."""
    settings = settings_of(who.config)
    with _recorded(sessions, "backup", who) as entry:
        engine = _engine(settings, progress)
        workspace = engine.workspace(who.session, stack=who.repo.stack)
        result = engine.backup(workspace, reason)
        entry["detail"] = (
            f"{reason}: snapshot {result.snapshot}, {result.files} files, {result.bytes} bytes"
        )
        return result


def snapshots(who: Target) -> list[backup.Snapshot]:
    return _engine(settings_of(who.config), lambda _line: None).snapshots(who.repo)


def restore(
    sessions: SessionsLike,
    who: Target,
    snapshot: str = "latest",
    into: Target | None = None,
    force: bool = False,
    progress: Progress = lambda _line: None,
) -> backup.RestoreResult:
    """Restore ``snapshot`` of ``who``'s backups into ``into``'s workspace (default its
    own), verified and audited (``restore``, on the session written to)."""
    destination = into or who
    settings = settings_of(who.config)
    if into is not None:
        mine = settings_of(into.config)
        if mine.credentials_dir != settings.credentials_dir:
            raise ConfigError(
                into.config.stack,
                [
                    "dockyard:backup.credentialsDir: differs between the two sessions "
                    "(allowed: the same credentials directory, which holds both passwords)"
                ],
            )
    with _recorded(sessions, "restore", destination) as entry:
        engine = _engine(settings, progress)
        workspace = engine.workspace(destination.session, stack=destination.repo.stack)
        result = engine.restore(who.repo, workspace, snapshot, force=force)
        entry["detail"] = (
            f"snapshot {result.snapshot[:8]} of {result.source}: {result.files} files, "
            f"{result.bytes} bytes verified"
            + (
                f"; previous content in {result.previous_snapshot}"
                if result.previous_snapshot
                else ""
            )
        )
        return result


def before_destroy(sessions: SessionsLike, plan: SessionPlan, progress: Progress) -> None:
    """The final backup ``destroy`` takes first (``backup.onDestroy``). A failure stops
    the destroy: nothing is destroyed, and the message says how to go on."""
    config = plan.config
    if config.backup is None or not config.backup.on_destroy:
        return
    who = Target(
        config, plan.session_id, plan.tenant, plan.stack_name, config.docker_host or "local"
    )
    progress(f"backup: final backup of {plan.session_id} before it is destroyed")
    try:
        run_backup(sessions, who, "destroy", progress)
    except backup.NotFound as error:
        progress(f"backup: nothing to back up ({error})")
    except backup.BackupError as error:
        raise backup.BackupError(
            f"{error}. Nothing was destroyed: retry, or destroy without a final backup "
            "(dockyard down --no-backup)"
        ) from None


def before_refresh(sessions: SessionsLike, plan: SessionPlan, progress: Progress) -> None:
    """A backup before the container is recreated. The workspace volume is kept either
    way, so a failed backup is reported and the refresh goes on."""
    config = plan.config
    if config.backup is None:
        return
    who = Target(
        config, plan.session_id, plan.tenant, plan.stack_name, config.docker_host or "local"
    )
    try:
        run_backup(sessions, who, "refresh", progress)
    except backup.BackupError as error:
        progress(f"WARNING: backup before refresh failed (the workspace is kept): {error}")


def as_dict(result: Any) -> dict[str, Any]:
    return dataclasses.asdict(result)
