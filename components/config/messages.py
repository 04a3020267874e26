"""Turning validation errors into problem lines a user can act on.

Every line reads ``<key path>: <value> is not allowed (allowed: <form>)``. The value is
shown only where it cannot hold a secret: under ``env``, ``labels``, ``secrets``, image
``args``, or any key named like a credential, a value is described by its type instead
(``<a string of 12 characters>``), and so is a mapping key that broke a grammar.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_camel

from .base import CONVENTIONAL_NAME, NAMESPACE, THIS_KEY

# Containers whose values (and keys) may be credentials; a backup repository URL may have
# a pasted key in it.
SENSITIVE_CONTAINERS = frozenset({"env", "labels", "secrets", "args", "repository"})
# Broader than the plain-env refusal on purpose: redacting too much costs nothing.
CREDENTIAL_LIKE = re.compile(r"key|token|secret|passw|credential|auth|cookie", re.ASCII | re.I)

# Values that carry a credential wherever they were pasted: URL user info, well-known
# token prefixes, PEM blocks.
CREDENTIAL_VALUE = re.compile(
    r"://[^/\s:@]*:[^/\s@]*@|\b(sk-|sk_|ghp_|gho_|ghs_|ghu_|github_pat_|glpat-|xox[abpr]-|AKIA|ASIA|AIza)"
    r"|-----BEGIN",
    re.ASCII,
)

_TYPE_NAMES = {
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "none_required": "nothing (null)",
    "too_long": "fewer items",
}


def describe(value: Any) -> str:
    """A value by its type and size only: safe to print whatever it holds."""
    if isinstance(value, bool):
        return "<a boolean>"
    if isinstance(value, str):
        return f"<a string of {len(value)} characters>"
    if isinstance(value, int | float):
        return "<a number>"
    if isinstance(value, list | tuple):
        return f"<a list of {len(value)} item{'' if len(value) == 1 else 's'}>"
    if isinstance(value, dict):
        return f"<a mapping of {len(value)} key{'' if len(value) == 1 else 's'}>"
    if value is None:
        return "<null>"
    return f"<a {type(value).__name__}>"


def render(value: Any) -> str:
    """A short, ASCII-only, single-line rendering that never raises."""
    try:
        if isinstance(value, str):
            text = ascii(value)
        elif isinstance(value, bool | int | float | list | dict) or value is None:
            text = json.dumps(value, ensure_ascii=True, allow_nan=True, default=str)
        else:
            text = ascii(str(value))
    except Exception:
        text = describe(value)
    return text if len(text) <= 80 else text[:77] + "..."


Loc = tuple[int | str, ...]
"""Where a value is in the stack's model: top-level key, then keys and list positions."""
KeyName = Callable[[Loc], str]
"""How a source names a location to its user: the input of parsing that decides every key
path a problem shows (a stack's ``dockyard:environments[0].ports[1]``, a request's
``request.container.ports[1]``, a flag's ``--memory``)."""


def key_path(loc: Iterable[int | str], prefix: str = NAMESPACE + ":") -> str:
    """``loc`` spelled the stack's way after ``prefix``: ``dockyard:environments[0].ports[1]``.

    The stack's own naming (the default :data:`KeyName`); the empty location is the
    namespace itself."""
    path = prefix
    for index, part in enumerate(loc):
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("" if index == 0 else ".") + str(part)
    return path if path != NAMESPACE + ":" else NAMESPACE


@dataclass(frozen=True)
class Problem:
    """One problem line, and where it sorts: by the stack's key path whatever the naming,
    so every source lists the same problems in the same order."""

    order: list[Any]
    text: str


def problem(loc: Loc, text: str, name: KeyName = key_path) -> Problem:
    """``<key>: <text>``, the key named by ``name``."""
    return Problem(order=natural_order(f"{key_path(loc)}: {text}"), text=f"{name(loc)}: {text}")


def lines(found: Iterable[Problem]) -> list[str]:
    """The problem lines in the stack's key order."""
    return [p.text for p in sorted(found, key=lambda p: p.order)]


def is_sensitive(loc: Iterable[int | str]) -> bool:
    return any(
        isinstance(part, str) and (part in SENSITIVE_CONTAINERS or CREDENTIAL_LIKE.search(part))
        for part in loc
    )


WORD_CHOICES = frozenset({"credentials"})
WORD = re.compile(r"[a-z]{1,16}", re.ASCII)


def looks_like_credential(value: Any) -> bool:
    return isinstance(value, str) and bool(CREDENTIAL_VALUE.search(value))


def shown(value: Any, loc: tuple[int | str, ...]) -> str:
    if value is THIS_KEY:
        return "this key"
    if isinstance(value, dict | list | tuple):
        return describe(value)  # never whole: a mapping or list may hold anything
    if not is_sensitive(loc) and not looks_like_credential(value):
        return render(value)
    # A choice among words (credentials: files|brokered) named like a credential: a
    # short lower-case word is a mistyped choice, shown; anything else is described.
    if loc and loc[-1] in WORD_CHOICES and isinstance(value, str) and WORD.fullmatch(value):
        return render(value)
    # Secret *names* written the conventional way are names, not values: show them.
    if "secrets" in loc and isinstance(value, str) and CONVENTIONAL_NAME.fullmatch(value):
        return render(value)
    return describe(value)


def suggest(key: str, known: Iterable[str]) -> str:
    """A "did you mean" hint for an unknown key: another spelling of a known key first
    (``workspace_host_path``), then close matches."""
    candidates = sorted(known)
    folded = {c.lower().replace("_", "").replace("-", ""): c for c in candidates}
    same = folded.get(str(key).lower().replace("_", "").replace("-", ""))
    if same is None:
        close = difflib.get_close_matches(to_camel(str(key)), candidates, n=1, cutoff=0.75)
        same = close[0] if close else None
    return f"; did you mean {same}?" if same else ""


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model a location points into (for the keys an unknown key could have been)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        fields = {f.alias or name: f for name, f in current.model_fields.items()}
        if part not in fields:
            return None
        current = _unwrap(fields[part].annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """list[X] / dict[str, X] / X | None / Annotated[X, ...] -> X, when X is a model."""
    for _ in range(6):
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return annotation
        args = [a for a in get_args(annotation) if a is not type(None)]
        if not args:
            return annotation
        origin = get_origin(annotation)
        annotation = args[-1] if origin is dict else args[0]
    return annotation


def problems(exc: ValidationError, root: type[BaseModel], name: KeyName = key_path) -> list[str]:
    """One line per problem of ``exc`` (in the order pydantic found them), keys named by
    ``name``."""
    return [p.text for p in located(exc, root, name)]


def located(exc: ValidationError, root: type[BaseModel], name: KeyName = key_path) -> list[Problem]:
    """Every problem of ``exc`` as a :class:`Problem`, keys named by ``name``."""
    found: list[Problem] = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
        if kind == "dockyard_items":
            for sub, item, allowed in ctx["items"]:
                item_loc = (*loc, sub)
                found.append(
                    problem(
                        item_loc,
                        f"{shown(item, item_loc)} {ctx['verb']} (allowed: {allowed})",
                        name,
                    )
                )
            continue
        if kind == "missing":
            found.append(problem(loc, "missing (allowed: a value is required)", name))
            continue
        if kind == "extra_forbidden":
            model = _model_at(root, loc[:-1])
            known = [f.alias or n for n, f in model.model_fields.items()] if model else []
            hint = suggest(str(loc[-1]), known)
            found.append(
                problem(loc, f"unknown key (allowed: {', '.join(sorted(known))}{hint})", name)
            )
            continue
        if kind == "dockyard":
            allowed = ctx["allowed"]
        elif kind == "literal_error":
            allowed = "one of " + str(ctx.get("expected", ""))
        else:
            # Never Python's own wording: a type name, or the documented form.
            allowed = _TYPE_NAMES.get(kind, "the form documented in docs/stacks.md")
        found.append(problem(loc, f"{shown(value, loc)} is not allowed (allowed: {allowed})", name))
    return found


def natural_order(problem: str) -> list[Any]:
    key = problem.split(": ", 1)[0]
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", key)]
