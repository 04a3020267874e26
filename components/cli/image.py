"""``dockyard image``: the host's core image."""

from __future__ import annotations

import typer

from ..sessions import Sessions
from ..terminal import errors
from .options import JsonFlag
from .output import emit, line, progress

verbs = typer.Typer(help="The host's core image.", no_args_is_help=True)


@verbs.command("build")
def image_build(as_json: JsonFlag = False) -> None:
    """Build the core image once on this host; sessions use it from then on."""
    with errors(as_json):
        reference = Sessions.default().build_image(progress=progress(as_json))
        emit({"imageRef": reference}, as_json, line(reference))
