"""``restore: latest`` at create: ``python -m dockyard.sessions.restore_at_create
restore-if-empty`` is the command a new environment runs between its workspace volume and
its container (:mod:`dockyard.environment`): the session's latest snapshot into the new,
empty workspace, verified, and one ``restore`` line of the sessions' audit trail.

A module of its own (not :mod:`dockyard.sessions.backups`, which the package imports) so
``python -m`` runs it once, as ``__main__``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence

from .. import backup
from ..errors import DockyardError
from . import audit
from .settings import paths


def restore_at_create(environ: Mapping[str, str]) -> int:
    """``restore: latest``: the latest snapshot into the new, empty workspace volume
    (settings, volume, stack and session from the ``DOCKYARD_BACKUP*`` variables the
    environment's Pulumi command sets); audited as ``restore``. Returns the exit code."""
    try:
        settings = backup.Settings.from_mapping(json.loads(environ.get("DOCKYARD_BACKUP", "")))
    except (json.JSONDecodeError, TypeError):
        print("ERROR: DOCKYARD_BACKUP is not the backup settings as JSON", file=sys.stderr)
        return 2
    repo = backup.Repo(
        environ.get("DOCKYARD_BACKUP_STACK", ""), environ.get("DOCKYARD_BACKUP_SESSION", "")
    )
    workspace = backup.Workspace(environ.get("DOCKYARD_BACKUP_VOLUME", ""), repo)
    engine = backup.Backups(settings, environ, log=lambda line: print(f"dockyard-restore: {line}"))
    log = paths(environ).audit_log
    with audit.recorded(log, "restore", session=repo.session, stack=repo.stack) as entry:
        restored = engine.restore_if_empty(workspace)
        entry["detail"] = (
            f"latest snapshot {restored.snapshot[:8]}: {restored.files} files, "
            f"{restored.bytes} bytes"
            if restored
            else "nothing to restore"
        )
    if restored is not None:
        print(
            f"dockyard-restore: session {repo.session}: restored snapshot {restored.snapshot[:8]} "
            f"({restored.files} files, {restored.bytes} bytes, verified)"
        )
    return 0


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """``restore-if-empty`` (the only command): 0 done, else the error root's code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args != ["restore-if-empty"]:
        print(
            f"ERROR: arguments {args!r} are not allowed (allowed: restore-if-empty)",
            file=sys.stderr,
        )
        return 2
    try:
        return restore_at_create(dict(os.environ if environ is None else environ))
    except DockyardError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
