"""What a verb prints: its result (a table, or JSON with ``--json``) on stdout, progress and
errors on stderr (:mod:`dockyard.terminal`, shared with the HTTP face's commands)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

from rich.console import Console
from rich.table import Table

from ..terminal import err

out = Console(highlight=False)


def emit(data: Any, as_json: bool, table: Callable[[Any], None]) -> None:
    """``data`` as JSON on stdout, else as ``table`` prints it."""
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=False))
    else:
        table(data)


def line(text: str) -> Callable[[Any], None]:
    """A result shown as one line of text (its JSON form is the data)."""
    return lambda _: out.print(text)


def progress(as_json: bool) -> Callable[[str], None]:
    """Engine output as it comes, on stderr (stdout stays the result, JSON or table)."""

    def show(text: str) -> None:
        err.print(text.rstrip("\n"), markup=False, highlight=False, soft_wrap=True)

    return show


@contextmanager
def working(what: str, as_json: bool) -> Iterator[None]:
    """A spinner on a terminal while a long step runs (never with ``--json``)."""
    with err.status(what) if err.is_terminal and not as_json else nullcontext():
        yield


def grid(header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """A table with a header row."""
    table = Table(*header)
    for row in rows:
        table.add_row(*row)
    out.print(table)


def ports(mappings: Iterable[dict[str, Any]], arrow: str) -> str:
    """Published ports, ``3000 -> 49153, ...``; ``-`` for none."""
    return ", ".join(f"{p['containerPort']}{arrow}{p['hostPort']}" for p in mappings) or "-"


def manifest_table(manifest: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None)
    table.add_row("session", manifest["sessionId"])
    table.add_row("backend", manifest["backend"])
    table.add_row(
        "container", f"{manifest['container']['name']} ({manifest['container']['id'][:12]})"
    )
    table.add_row("image", manifest["image"])
    table.add_row("cwd", manifest["cwd"])
    table.add_row("ports", ports(manifest["container"]["portMappings"], " -> "))
    table.add_row("created", manifest["createdAt"])
    out.print(table)
