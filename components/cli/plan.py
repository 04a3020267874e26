"""``dockyard plan``: previews of the next deployment phase (they create nothing)."""

from __future__ import annotations

from typing import Annotated

import typer

from .. import modal_plan
from ..terminal import errors

verbs = typer.Typer(
    help="Preview the next deployment phase (creates nothing).", no_args_is_help=True
)


@verbs.command("modal")
def plan_modal(
    manifest: Annotated[str, typer.Argument(help="A session's manifest file (v1).")],
    stack: Annotated[str | None, typer.Option(help="Stack file for limits and GPU.")] = None,
    cpus: Annotated[
        float | None, typer.Option(help="CPUs (default: the stack's, else dockyard's).")
    ] = None,
    memory: Annotated[
        str | None, typer.Option(help="Memory: MB or with a unit (8192, 8g).")
    ] = None,
    gpu: Annotated[str | None, typer.Option(help=modal_plan.GPU_FLAG_ALLOWED)] = None,
) -> None:
    """Preview the Modal sandbox equivalent of a manifest (creates nothing)."""
    with errors(False):
        print(modal_plan.preview(manifest, stack, cpus, memory, gpu))
