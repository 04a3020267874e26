"""Mappings whose keys are names: environment variables, labels, build args, secret names.

Every bad key is one problem. A key that breaks the grammar is named by position only (it
may be a pasted secret); one that follows it but is refused otherwise is named.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
)

from . import values as v
from .base import THIS_KEY

RESERVED_LABEL_PREFIX = "dockyard."
RESERVED_ENV_PREFIX = "DOCKYARD_"


def _keys_checked(check: Any) -> Any:
    """A before-validator for a mapping whose keys follow a grammar: every bad key is one
    problem. A key that breaks the grammar is named by position only (it may be a pasted
    secret); one that follows it but is refused otherwise is named."""

    def validate(value: Any) -> Any:
        if not isinstance(value, dict):
            return value  # the mapping type reports it
        if len(value) > v.MAX_ITEMS:
            raise v.refuse(f"a mapping of at most {v.MAX_ITEMS} keys")
        problems = []
        for position, key in enumerate(value):
            allowed, grammatical = check(key)
            if allowed:
                problems.append(
                    (key if grammatical else f"<key {position + 1}>", THIS_KEY, allowed)
                )
        if problems:
            raise v.refuse_items(problems)
        return value

    return validate


KeyCheck = tuple[str | None, bool]
"""(what is allowed if the key is refused, whether the key follows the grammar)."""


def _env_key(key: Any) -> KeyCheck:
    if not isinstance(key, str) or not v.ENV_NAME.fullmatch(key):
        return v.ENV_NAME_ALLOWED, False
    if key.startswith(RESERVED_ENV_PREFIX):
        return f"names outside {RESERVED_ENV_PREFIX}*, which dockyard sets itself", True
    if v.SECRET_NAME.search(key):
        return (
            f"secrets only as secret config; list {key} under secrets and run "
            f"`pulumi config set --secret {key} <value>`"
        ), True
    return None, True


def _label_key(key: Any) -> KeyCheck:
    if not isinstance(key, str) or not v.LABEL_KEY.fullmatch(key):
        return v.LABEL_KEY_ALLOWED, False
    if key.startswith(RESERVED_LABEL_PREFIX):
        return f"keys outside {RESERVED_LABEL_PREFIX}*, which dockyard sets itself", True
    return None, True


def _arg_key(key: Any) -> KeyCheck:
    if not isinstance(key, str) or not v.ENV_NAME.fullmatch(key):
        return "build arg names made of letters, digits and '_', not starting with a digit", False
    return None, True


EnvVars = Annotated[dict[str, v.Text], BeforeValidator(_keys_checked(_env_key))]
Labels = Annotated[dict[str, v.Text], BeforeValidator(_keys_checked(_label_key))]
BuildArgs = Annotated[dict[str, v.Text], BeforeValidator(_keys_checked(_arg_key))]


def _secret_names(value: Any) -> Any:
    if not isinstance(value, list):
        return value
    if len(value) > 64:
        raise v.refuse("a list of at most 64 secret names")
    problems: list[tuple[int | str, Any, str]] = []
    first: dict[str, int] = {}
    for index, name in enumerate(value):
        if not isinstance(name, str) or not v.ENV_NAME.fullmatch(name):
            problems.append((index, name, v.ENV_NAME_ALLOWED))
        elif name in first:
            problems.append((index, name, f"each secret name once; secrets[{first[name]}] has it"))
        else:
            first[name] = index
    if problems:
        raise v.refuse_items(problems)
    return value


SecretNames = Annotated[list[str], BeforeValidator(_secret_names)]
