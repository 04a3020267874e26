"""The base of dockyard's Pulumi components: the package prefix of every type token, and
the options that make what a component declares its child.

Every language's SDK sees the components as ``dockyard:index:<Kind>``; the component
provider (:mod:`dockyard.provider`) names its package with the same :data:`PACKAGE`."""

from __future__ import annotations

import pulumi

PACKAGE = "dockyard"


class Component(pulumi.ComponentResource):
    """A dockyard component of type ``dockyard:index:<kind>``.

    ``child`` (set here, not annotated: the provider's schema reads the annotations as the
    component's outputs) is ``ResourceOptions(parent=self)``, the options of every
    resource the component declares."""

    def __init__(self, kind: str, name: str, opts: pulumi.ResourceOptions | None) -> None:
        super().__init__(f"{PACKAGE}:index:{kind}", name, None, opts)
        self.child = pulumi.ResourceOptions(parent=self)
