"""Options several verbs take, spelled once (a verb module reuses them as parameter types)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..terminal import JsonFlag

TenantOption = Annotated[str | None, typer.Option("--tenant", help="The session's tenant.")]
RequestOption = Annotated[
    str | None, typer.Option("--request", "-r", help="A request JSON file ('-': stdin).")
]
StackFileOption = Annotated[
    str | None,
    typer.Option("--stack", help="A stack's environment: its stacks/Pulumi.<stack>.yaml file."),
]

__all__ = ["JsonFlag", "RequestOption", "StackFileOption", "TenantOption"]
