"""What rules about one environment need to know about the rest of the stack.

Pydantic validates a stack's fields in declaration order; :class:`StackConfig` records
each top-level value here once it is valid, and declares ``environments`` last, so an
environment's rules (bind roots, profiles, secrets set, unique session ids) read typed,
validated values — never the raw mapping. A value that failed is simply absent: the rules
that depend on it stay quiet and its own problem is reported where it lives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationInfo

SecretHint = Callable[[str], str]
"""How a source tells its user to supply a secret: the secret's name (or ``<NAME>`` when
the name is not written the conventional way) -> what is allowed."""


def stack_secret_hint(name: str) -> str:
    """A stack's secrets are its Pulumi config's secret values."""
    return f"a secret in this stack's config; run `pulumi config set --secret {name} <value>`"


@dataclass
class Scope:
    secret_names: frozenset[str] = frozenset()
    """Secret names set in the stack (stored with --secret or not: plain ones are refused
    on their own)."""
    check_secrets: bool = True
    secret_hint: SecretHint = stack_secret_hint
    """What a "secret not set" problem says is allowed (the source decides)."""
    settled: dict[str, Any] = field(default_factory=dict)
    """Top-level field name -> validated value, filled in declaration order."""
    sessions: dict[str, int] = field(default_factory=dict)
    """Session id -> index of the first environment that has it."""
    environment_index: int = -1

    def known(self, name: str) -> bool:
        return name in self.settled

    def get(self, name: str) -> Any:
        return self.settled.get(name)


def scope_of(info: ValidationInfo) -> Scope | None:
    """The stack scope of a validation, or None when a model is validated on its own."""
    context = info.context
    return context if isinstance(context, Scope) else None


def on_kubernetes(scope: Scope | None) -> bool:
    """The stack's backend is Kubernetes (known and valid)."""
    return scope is not None and scope.get("backend") == "kubernetes"


def local_engine(scope: Scope) -> bool:
    """The stack's (one) Docker engine is this machine's: paths can be checked here."""
    host = scope.get("docker_host")
    return scope.known("docker_host") and (host is None or host.startswith("unix://"))
