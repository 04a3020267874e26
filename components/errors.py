"""The one error root every face reports from.

Every failure a user can act on is a :class:`DockyardError`: it carries the exit code the
CLI returns, the HTTP status the API answers, and the lines the user reads (the same text
on every face). Subclasses say which kind of failure it is; the modules that raise them
keep their own names (``ConfigError``, ``QuotaError``, ``SessionNotFound``...) so callers
can catch precisely, while a face only ever catches the root.

Exit codes (docs/sessions.md): 0 done; 1 failed (engine, driver, Pulumi, storage); 2 invalid
input (every problem listed); 3 a quota would be passed; 4 no such thing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

OK = 0
FAILED = 1
INVALID = 2
QUOTA = 3
NOT_FOUND = 4


class DockyardError(Exception):
    """Something a user asked for did not happen; ``problems`` says why, one line each.

    A kind sets its exit code, HTTP status and name in its class line:
    ``class InvalidInput(DockyardError, code=INVALID, status=422, kind="invalid")``."""

    exit_code: ClassVar[int] = FAILED
    http_status: ClassVar[int] = 502
    kind: ClassVar[str] = "failed"

    def __init_subclass__(
        cls, *, code: int | None = None, status: int | None = None, kind: str | None = None
    ) -> None:
        super().__init_subclass__()
        if code is not None:
            cls.exit_code = code
        if status is not None:
            cls.http_status = status
        if kind is not None:
            cls.kind = kind

    def __init__(self, message: str, problems: Sequence[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self._problems = list(problems) if problems is not None else None

    @property
    def problems(self) -> list[str]:
        """The lines a user reads: each problem on its own line (at least one)."""
        return list(self._problems) if self._problems else [self.message]

    def __str__(self) -> str:
        return self.message

    def as_dict(self) -> dict[str, object]:
        """The error object every face prints with ``--json`` or answers over HTTP."""
        return {"code": self.exit_code, "kind": self.kind, "problems": self.problems}


class Failed(DockyardError):
    """The engine, the driver, Pulumi or storage did not do what was asked."""


DEBUG_VARIABLE = "DOCKYARD_DEBUG"
"""Set to 1: an unexpected error's traceback is printed too (stderr)."""


def unexpected(error: BaseException) -> Failed:
    """What a face says of an error that is not a DockyardError (a bug of dockyard's: every
    layer turns what it knows into one): one line, its type, how to get the traceback."""
    return Failed(
        f"unexpected error ({type(error).__name__}): this is a bug in dockyard; run again "
        f"with {DEBUG_VARIABLE}=1 for the traceback and report it"
    )


class InvalidInput(DockyardError, code=INVALID, status=422, kind="invalid"):
    """A request, stack file, setting or flag is not allowed; every problem is listed."""


class QuotaExceeded(DockyardError, code=QUOTA, status=429, kind="quota"):
    """A create would pass a cap; the message names host, cap, use and request."""


class NotFound(DockyardError, code=NOT_FOUND, status=404, kind="not-found"):
    """No such session, snapshot or backup (or one the caller may not see)."""


class Conflict(DockyardError, code=FAILED, status=409, kind="conflict"):
    """The thing exists already, or is busy with another operation."""


_PLAIN = re.compile(r"[A-Za-z0-9._:/@+ -]{0,64}", re.ASCII)
_KEY_SHAPED = re.compile(r"sk-|ghp_|gho_|github_pat_|xox[bp]-|AKIA|BEGIN|://[^/@]*:[^/@]*@", re.I)


def shown(value: object) -> str:
    """``value`` as an error message may show it: scalars as they are, a short plain string
    quoted, anything else (a mapping, a list, a long or key-shaped string) described by type
    and size only — a pasted secret is never echoed."""
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, str):
        if _PLAIN.fullmatch(value) and not _KEY_SHAPED.search(value):
            return repr(value)
        return f"<a string of {len(value)} characters>"
    if isinstance(value, dict):
        return f"<a mapping of {len(value)} key{'' if len(value) == 1 else 's'}>"
    if isinstance(value, list | tuple):
        return f"<a list of {len(value)} item{'' if len(value) == 1 else 's'}>"
    return f"<a {type(value).__name__}>"
