"""The root command ``dockyard``: the Typer app every verb module registers on, ``--version``,
and the one handler every verb runs inside."""

from __future__ import annotations

import os
import sys
import traceback
from importlib import metadata
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

from ..errors import DEBUG_VARIABLE, INVALID, OK, DockyardError, Failed, InvalidInput, unexpected
from ..terminal import fail


class _Faces(TyperGroup):
    """The root command: every verb, whatever sub-app it is in, runs inside one handler.

    A :class:`DockyardError` prints its lines (or the ``--json`` error object) and exits
    with its code. Anything else that escapes is a bug of dockyard's (every layer turns
    what it knows into a DockyardError): the last resort prints one line and exits 1; the
    traceback only with DOCKYARD_DEBUG=1."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: Any = None,
        **extra: Any,
    ) -> Any:
        self._argv = list(args)
        _flag_help(self)
        return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: Any) -> Any:
        as_json = "--json" in getattr(self, "_argv", [])
        try:
            return super().invoke(ctx)
        except typer.TyperException as error:
            # A usage error (exit 2): with --json, the error object like any other.
            if as_json and hasattr(error, "format_message"):
                code = getattr(error, "exit_code", INVALID)
                kind = InvalidInput if code == INVALID else Failed
                fail(kind(error.format_message()), True)
            raise
        except (typer.Exit, typer.Abort):
            raise  # --help, --version, a verb's own exit
        except DockyardError as error:
            fail(error, as_json)
        except Exception as error:
            _unexpected(error, as_json)


def _flag_help(command: Any) -> None:
    """Flags (``--help``, ``--json``, every on/off option of every sub-app) are shown
    without a value type (Typer shows ``<bool>``)."""
    option = command.get_help_option(typer.Context(command))
    for param in [*getattr(command, "params", []), option]:
        if param is not None and getattr(param, "is_flag", False):
            param.metavar = ""
    for child in (getattr(command, "commands", None) or {}).values():
        _flag_help(child)


def _unexpected(error: BaseException, as_json: bool) -> NoReturn:
    if os.environ.get(DEBUG_VARIABLE) == "1":
        traceback.print_exception(error, file=sys.stderr)
    fail(unexpected(error), as_json)


def _version(value: bool) -> None:
    if value:
        try:
            version = metadata.version("dockyard")
        except metadata.PackageNotFoundError:
            version = "unknown (not installed as a package)"
        print(f"dockyard {version}")
        raise typer.Exit(OK)


app = typer.Typer(
    name="dockyard",
    cls=_Faces,
    help="Isolated container environments for AI coding agent sessions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print dockyard's version and exit.",
            callback=_version,
            is_eager=True,
            metavar="",
        ),
    ] = False,
) -> None:
    """Isolated container environments for AI coding agent sessions."""
