"""Drivers apply a validated session plan. ``PulumiDriver`` is the product's: the
Automation API, one stack per session, running :func:`dockyard.program.run` inline.

The Automation API needs the Pulumi CLI; this layer is kept thin (what it is given is
unit-tested) and the manual check with a real CLI is in docs/sessions.md. Another driver
can be named with ``DOCKYARD_DRIVER=module:Class`` — the test suite's Docker-realising
harness (``tests.harness.sessions:HarnessDriver``) is one, and the only one shipped
outside the package.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ..config import config_key
from ..errors import DockyardError, Failed
from .request import SessionPlan
from .settings import Paths

if TYPE_CHECKING:
    from ..config import StackConfig
    from ..image import AgentImage

# The program and the image component import the Pulumi provider SDKs (about half a
# second): loaded only when a driver applies something, so `dockyard ls` stays quick.


def _program() -> Any:
    from .. import program

    return program


Progress = Callable[[str], None]


class DriverError(Failed):
    """The driver could not apply a plan (the message says why)."""


@contextlib.contextmanager
def reported(action: str, stack: str) -> Iterator[None]:
    """A driver call whose failure reaches the user as a :class:`DriverError` naming the
    action, the stack and the last lines of what the engine or Pulumi said: a driver may
    raise its own errors (Pulumi's CommandError, the engine's APIError), and none of them
    may leave a user with "unexpected error" instead of the reason."""
    try:
        yield
    except DockyardError:
        raise
    except Exception as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = " / ".join(lines[-5:]) if lines else type(exc).__name__
        raise DriverError(f"{action} of stack {stack} failed: {reason}") from exc


class Driver(Protocol):
    def up(
        self, plan: SessionPlan, secrets: Mapping[str, str], progress: Progress
    ) -> dict[str, Any]:
        """Create or converge the session; return its manifest."""

    def destroy(self, plan: SessionPlan, progress: Progress) -> None:
        """Remove everything of the session (its stack included)."""

    def recreate(
        self, plan: SessionPlan, secrets: Mapping[str, str], progress: Progress
    ) -> dict[str, Any]:
        """Replace the session's container, keeping its volumes; return the manifest."""


def container_urn(plan: SessionPlan) -> str:
    """The URN the program gives the session's container (for a targeted replace)."""
    session = plan.session_id
    return (
        f"urn:pulumi:{plan.stack_name}::{PROJECT}::dockyard:index:AgentEnvironment$"
        f"docker:index/container:Container::env-{session}-container"
    )


PROJECT = "dockyard-sessions"
IMAGES_STACK = "images"


def images_program(config: StackConfig) -> AgentImage:
    """The host's core image, once, for every session (tag prefix ``host``)."""
    from ..image import AgentImage, AgentImageArgs

    image = AgentImage(
        "image-core",
        AgentImageArgs(
            variant="core",
            build_args=config.image.args,
            tag_prefix=config.image.tag or "host",
            extra_ca=config.image.extra_ca,
        ),
    )
    import pulumi

    pulumi.export("imageRef", image.image_id)
    return image


class PulumiDriver:
    """The Automation API with the same defaults as ``make up``: the local file backend
    and the passphrase secrets provider (``PULUMI_CONFIG_PASSPHRASE`` or the file that
    ``make up`` generates)."""

    def __init__(self, where: Paths, automation: Any = None) -> None:
        self.where = where
        if automation is None:
            try:
                from pulumi import automation
            except ImportError as exc:  # pragma: no cover - pulumi is a dependency
                raise DriverError(f"the Pulumi SDK is missing: {exc}") from None
        self.auto = automation

    def _stack(self, plan: SessionPlan, run: Callable[[], None]) -> Any:
        return self._stack_named(plan.stack_name, run)

    def _stack_named(self, stack_name: str, run: Callable[[], None]) -> Any:
        auto = self.auto
        env_vars = {}
        if not os.environ.get("PULUMI_CONFIG_PASSPHRASE"):
            if not self.where.passphrase_file.is_file():
                raise DriverError(
                    f"no Pulumi passphrase: set PULUMI_CONFIG_PASSPHRASE or create "
                    f"{self.where.passphrase_file} (make up generates one)"
                )
            env_vars["PULUMI_CONFIG_PASSPHRASE_FILE"] = str(self.where.passphrase_file)
        options = auto.LocalWorkspaceOptions(
            project_settings=auto.ProjectSettings(
                name=PROJECT,
                runtime="python",
                backend=auto.ProjectBackend(url=self.where.pulumi_backend),
            ),
            secrets_provider="passphrase",
            env_vars=env_vars,
        )
        try:
            return auto.create_or_select_stack(
                stack_name=stack_name, project_name=PROJECT, program=run, opts=options
            )
        except FileNotFoundError as exc:
            raise DriverError(
                "the Pulumi CLI is not installed (https://www.pulumi.com/docs/iac/download-install/)"
                f": {exc}"
            ) from None

    def up(
        self, plan: SessionPlan, secrets: Mapping[str, str], progress: Progress
    ) -> dict[str, Any]:
        stack = self._stack(plan, lambda: _program().run(plan.config) and None)
        for name, value in secrets.items():
            stack.set_config(config_key(name), self.auto.ConfigValue(value=value, secret=True))
        result = stack.up(on_output=progress)
        return dict(result.outputs["environments"].value[plan.session_id])

    def recreate(
        self, plan: SessionPlan, secrets: Mapping[str, str], progress: Progress
    ) -> dict[str, Any]:
        stack = self._stack(plan, lambda: _program().run(plan.config) and None)
        result = stack.up(on_output=progress, replace=[container_urn(plan)])
        return dict(result.outputs["environments"].value[plan.session_id])

    def build_image(self, config: StackConfig, progress: Progress) -> str:
        stack = self._stack_named(IMAGES_STACK, lambda: images_program(config) and None)
        result = stack.up(on_output=progress)
        return str(result.outputs["imageRef"].value)

    def destroy(self, plan: SessionPlan, progress: Progress) -> None:
        stack = self._stack(plan, lambda: None)
        stack.destroy(on_output=progress)
        stack.workspace.remove_stack(plan.stack_name)


def load(where: Paths, spec: str | None = None) -> Driver:
    """The driver named by ``spec`` / ``$DOCKYARD_DRIVER`` (``module:Class``), else Pulumi."""
    spec = spec or os.environ.get("DOCKYARD_DRIVER")
    if not spec:
        return PulumiDriver(where)
    module_name, _, class_name = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise DriverError(
            f"DOCKYARD_DRIVER={spec!r} cannot be loaded ({exc}); allowed: module:Class"
        ) from None
    return factory(where)
