"""What the command-line faces print when a verb fails: one helper for ``dockyard``'s verbs
(:mod:`dockyard.cli`) and the HTTP face's commands it mounts (``dockyard serve``,
``dockyard keys``, :mod:`dockyard.api.commands`).

A :class:`~dockyard.errors.DockyardError` exits with its ``exit_code``; with ``--json`` its
error object (:meth:`~dockyard.errors.DockyardError.as_dict`, the one the HTTP API answers
with, without the request id) goes to stdout and nothing else; else one ``ERROR:`` line per
problem on stderr. Problem lines are printed as text, never as console markup.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from .errors import DockyardError

err = Console(stderr=True, highlight=False)
"""Progress, warnings and errors (stdout holds only the result)."""

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON.", metavar="")]
"""``--json``: every verb that prints data takes it the same way (named ``as_json``)."""


def fail(error: DockyardError, as_json: bool) -> NoReturn:
    """Print ``error`` the way the verb was asked, then exit with its code."""
    if as_json:
        print(json.dumps({"error": error.as_dict()}))
    else:
        for line in error.problems:
            err.print(f"[red]ERROR[/red]: {escape(line)}", markup=True, soft_wrap=True)
    raise typer.Exit(error.exit_code)


@contextmanager
def errors(as_json: bool) -> Iterator[None]:
    """Around a verb's body: every failure a user can act on is a DockyardError."""
    try:
        yield
    except DockyardError as error:
        fail(error, as_json)


def warn(line: str) -> None:
    """A problem that does not stop the verb (stderr)."""
    err.print(f"[yellow]WARNING[/yellow]: {escape(line)}", markup=True, soft_wrap=True)
