"""E2B template ids as dockyard environments (issue 30): which backend, variant and
profile a sandbox created from a template id gets (docs/e2b.md has the table)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInput


@dataclass(frozen=True)
class Template:
    backend: str
    variant: str | None = None
    """None: the host's default variant (core)."""
    profile: str | None = None
    """None: the host's default profile."""
    about: str = ""


TEMPLATES: dict[str, Template] = {
    "base": Template("claude", about="the SDKs' default: the core image, the host's profile"),
    "claude": Template("claude", about="the core image with Claude Code"),
    "codex": Template("codex", about="the core image with Codex CLI"),
    "python": Template("claude", "python", about="the python runtime variant"),
    "code-interpreter-v1": Template("claude", "python", about="the python runtime variant"),
    "node": Template("claude", "node", about="the node runtime variant"),
    "go": Template("claude", "go", about="the go runtime variant"),
}
"""E2B template id -> dockyard backend, variant, profile (docs/e2b.md has this table).
Besides these names, ``<backend>-<variant>[-<profile>]`` (a warm pool's label, e.g.
``codex-python-large``) names one directly."""
POOL_LABEL = re.compile(r"(claude|codex)-(core|python|node|go)(?:-([a-z0-9][a-z0-9_-]{0,62}))?")


def template(name: Any) -> Template:
    """The dockyard environment of an E2B template id (``name:tag`` answers like ``name``)."""
    if not isinstance(name, str) or not name:
        raise InvalidInput("templateID", [_template_problem(name)])
    base = name.split(":", 1)[0]
    if base in TEMPLATES:
        return TEMPLATES[base]
    matched = POOL_LABEL.fullmatch(base)
    if matched:
        return Template(matched.group(1), matched.group(2), matched.group(3), about="by label")
    raise InvalidInput("templateID", [_template_problem(name)])


def _template_problem(name: Any) -> str:
    shown = repr(name) if isinstance(name, str) and len(name) <= 80 else "this value"
    return (
        f"templateID: {shown} is not a template this host serves (allowed: "
        f"{', '.join(TEMPLATES)}, or <backend>-<variant>[-<profile>] such as "
        "claude-python-standard; building templates is not supported, see docs/e2b.md)"
    )
