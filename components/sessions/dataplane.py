"""A session's data plane: run a command in its container, send it signals, read and write
its workspace, and read its stats, logs and ports (issue 27 item 1).

``Sessions.workspace(session, tenant)`` finds the container the way host tools do (the
registry's record, the manifest checked against the engine by :mod:`.located`) and answers
a :class:`Workspace` bound to it, through :meth:`Workspace.open`: the one way in, every
face (HTTP, CLI) calls these verbs.

One module per job, :class:`Workspace` puts them together:

- :mod:`.workspace_paths`: where a path may point (lexical rules);
- :mod:`.exec_streams`: Docker's exec stream, output and input sides;
- :mod:`.workspace_container`: the engine's client, an exec's socket, the limits;
- :mod:`.workspace_exec`: run a command, stream it, signal it;
- :mod:`.workspace_files`: the file helper's verbs (stat, list, remove, read, write);
- :mod:`.workspace_stats`: stats and logs; :mod:`.workspace_ports`: ports and previews.

Trust: everything that comes out of the container is the agent's (hostile) data. Command
output is passed through as opaque bytes, never parsed; the file helper's status lines are
JSON read with size limits and checked field by field. Paths are checked twice: lexically
here (:func:`workspace_path`), and walked inside the container by
:mod:`.workspace_helper`, which refuses every symlink on the way (O_NOFOLLOW from the
parent's descriptor), so no path or link leads out of ``/workspace``. Nothing is ever
resolved on the host side.

The Docker engine is the backend (local or ``ssh://``); a Kubernetes session has no exec
or archive stream here yet (see docs/api.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import Failed
from . import located
from .exec_streams import STREAMS, Controls, Frames, Raw
from .registry import Record
from .workspace_container import HELPER_TIMEOUT_SECONDS, STATUS_LINE_MAX, Limits, client_for
from .workspace_exec import (
    SIGNALS,
    Event,
    ExecRequest,
    ExecVerbs,
    Exit,
    Idle,
    Output,
    Started,
    signal_name,
)
from .workspace_files import Forbidden, TooLarge
from .workspace_files import _entry as _entry  # the unit tests' handle on the checks
from .workspace_files import _status as _status
from .workspace_paths import NAME_MAX, PATH_MAX, shown, workspace_path
from .workspace_ports import PREVIEW_DOMAIN_VARIABLE, PortsVerbs
from .workspace_stats import StatsVerbs

__all__ = [
    "HELPER_TIMEOUT_SECONDS",
    "NAME_MAX",
    "PATH_MAX",
    "PREVIEW_DOMAIN_VARIABLE",
    "SIGNALS",
    "STATUS_LINE_MAX",
    "STREAMS",
    "Controls",
    "Event",
    "ExecRequest",
    "Exit",
    "Forbidden",
    "Frames",
    "Idle",
    "Limits",
    "Output",
    "Raw",
    "Record",
    "Started",
    "TooLarge",
    "Workspace",
    "client_for",
    "shown",
    "signal_name",
    "workspace_path",
]


class Workspace(ExecVerbs, StatsVerbs, PortsVerbs):
    """One session's container, located and checked; every verb runs as the agent user."""

    @classmethod
    def open(
        cls,
        record: Record,
        manifest: Mapping[str, Any],
        limits: Limits | None = None,
        client: Any = None,
        backend: str | None = None,
    ) -> Workspace:
        """The workspace of ``record``'s container, once the engine confirms the manifest
        (``backend``: the host's, from its settings). The one way in for every face."""
        import docker.errors

        if backend == "kubernetes":
            raise Failed(
                f"session {record.session_id!r} runs on Kubernetes: exec, files, stats and "
                "logs need a Docker engine here (the Kubernetes backend has no exec or "
                "archive stream in dockyard yet; use kubectl exec / kubectl cp meanwhile)"
            )
        engine = client or client_for(record.host)
        try:
            located.verify(record, manifest, engine)
        except docker.errors.DockerException as exc:
            raise Failed(
                f"session {record.session_id!r}: its engine ({record.host}) cannot be "
                f"reached: {exc}"
            ) from None
        return cls(record, manifest, engine, limits or Limits())

    # The helper's knobs as this module names them: set here, they take effect at the next
    # call (as before the split).
    helper_timeout = property(lambda _: HELPER_TIMEOUT_SECONDS)
    status_line_max = property(lambda _: STATUS_LINE_MAX)
