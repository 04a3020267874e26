"""Encrypted workspace backups: one restic repository per session in S3-compatible storage.

Each session's workspace volume is backed up with restic (Debian's package on the Docker
host; restic does the encryption, chunking and deduplication) to its own repository,
``<repository>/<stack>/<session>``, under its own random password. Passwords and storage
keys stay on the host, in a private directory (``credentials_dir``, 0700, files 0600):

- ``passwords/<stack>/<session>``: the repository password, created at the first backup;
- ``s3-credentials``: the storage keys, AWS shared-credentials format (``[default]``
  ``aws_access_key_id`` / ``aws_secret_access_key`` / ``aws_session_token``). Without it,
  the caller's ``AWS_*`` variables, else restic's own chain (an instance role).

How restic reaches a workspace: a short-lived **helper container** from ``image`` with the
workspace volume at ``/data`` (read-only for a backup) and the host's restic binary mounted
in. The engine mounts the volume, so every kind works the same — a plain named volume, one
bound to ``workspaceHostPath`` (whose host mountpoint is empty while no container uses
it), a stopped environment's — and snapshots always hold ``/data``, so any session's
snapshot restores into any other's workspace. The helper runs as the agent's uid (1000)
with no capabilities, a read-only root and ``no-new-privileges``: it has exactly the
agent's rights over the agent's own files. It shares the host's network (loopback
endpoints work as they do for restic on the host), PID and UTS namespaces: restic's lock
records then name a host process, so a backup killed with SIGKILL leaves a lock that
``restic unlock`` knows to be stale, exactly as for restic run on the host.

Secrets never appear in an argv, an environment entry of any container, a mount or a
label: the helper's shell reads ``KEY=VALUE`` lines (the storage keys) from its stdin up
to an empty line into restic's environment, and restic reads the password from the rest
of stdin. The environment itself gets nothing of this.

Standard library only, and nothing here knows sessions: the ``workspace-backup`` host
command (:mod:`dockyard.workspace_backup`, installed by ``roles/workspace_backup`` with the
package's host modules) and the sessions layer (:mod:`dockyard.sessions.backups`: the
``dockyard`` command, the audit trail, restore at create) are its callers.

- :mod:`.model`: settings, names, errors and results;
- :mod:`.engine`: :class:`Backups` (the helper container, the operations);
- :mod:`.host_files`: the credentials directory, restic's cache and the host's locks;
- :mod:`.restic_output`: restic's JSON and its failures, named.
"""

from __future__ import annotations

from . import model
from .engine import Backups, Runner
from .host_files import HostFiles
from .model import *  # noqa: F403  (the model's public names: model.__all__, listed once there)

__all__ = ["Backups", "HostFiles", "Runner", *model.__all__]
