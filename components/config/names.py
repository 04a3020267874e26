"""Mappings whose keys are names: environment variables, labels, build args, secret names.

Every bad key is one problem. A key that breaks the grammar is named by position only (it
may be a pasted secret); one that follows it but is refused otherwise is named.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)

from . import values as v
from .base import CONVENTIONAL_NAME, THIS_KEY
from .messages import looks_like_credential
from .scope import scope_of, stack_secret_hint

RESERVED_LABEL_PREFIX = "dockyard."
RESERVED_ENV_PREFIX = "DOCKYARD_"


CREDENTIAL_KEY = re.compile(
    r"(^|[._/-])(tokens?|secrets?|passwords?|passwd|api[_-]?keys?|credentials?|private[_-]?keys?"
    r"|auth)($|[._/-])",
    re.ASCII | re.I,
)
"""A label or build-arg key named like a credential (``com.example.api-token``)."""
SHOWN_KEY = re.compile(r"[\x21-\x7e]{1,32}", re.ASCII)


def _plain_key(key: Any, position: int) -> str:
    """How a refused key is named: as written when it is short printable ASCII that does
    not look like a credential, else by position (it may be a pasted secret)."""
    if isinstance(key, str) and SHOWN_KEY.fullmatch(key) and not looks_like_credential(key):
        return key
    return f"<key {position + 1}>"


def _fix(name: str, info: ValidationInfo) -> str:
    """How a credential is given instead: as a secret, the way the source supplies one."""
    scope = scope_of(info)
    hint = scope.secret_hint if scope is not None else stack_secret_hint
    shown = name if CONVENTIONAL_NAME.fullmatch(name) else "<NAME>"
    return f"list {shown} under secrets instead: {hint(shown)}"


def _keys_checked(check: Any, where: str) -> Any:
    """A wrap-validator for a mapping whose keys follow a grammar and whose values are plain
    configuration (``where`` says who can read them): every bad key, credential-named key
    and credential-looking value is one problem, listed with the values' own problems."""

    def validate(value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        if not isinstance(value, dict):
            return handler(value)  # the mapping type reports it
        if len(value) > v.MAX_ITEMS:
            raise v.refuse(f"a mapping of at most {v.MAX_ITEMS} keys")
        keys: list[tuple[int | str, Any, str]] = []
        credentials: list[tuple[int | str, Any, str]] = []
        for position, (key, item) in enumerate(value.items()):
            allowed, grammatical = check(key)
            named = key if grammatical else _plain_key(key, position)
            if allowed:
                keys.append((named, THIS_KEY, allowed))
            elif isinstance(key, str) and (v.SECRET_NAME.search(key) or CREDENTIAL_KEY.search(key)):
                credentials.append(
                    (
                        named,
                        THIS_KEY,
                        f"no credential-named key in plain configuration ({where}); "
                        + _fix(_as_name(key), info),
                    )
                )
            elif looks_like_credential(item):
                credentials.append(
                    (
                        named,
                        item,
                        f"no credential in plain configuration ({where}); "
                        + _fix(_as_name(str(named)), info),
                    )
                )
        if keys:
            raise v.refuse_items(keys + credentials)
        try:
            result = handler(value)
        except ValidationError as exc:
            items = list(credentials)
            for error in exc.errors():
                loc = error["loc"]
                if len(loc) != 1:
                    raise
                allowed = (error.get("ctx") or {}).get("allowed") or "a one-line string"
                items.append((loc[0], error.get("input"), str(allowed)))
            raise v.refuse_items(items) from None
        if credentials:
            raise v.refuse_items(credentials)
        return result

    return validate


def _as_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", key).upper()


KeyCheck = tuple[str | None, bool]
"""(what is allowed if the key is refused, whether the key follows the grammar)."""


def _key_rule(
    grammar: re.Pattern[str], allowed: str, reserved: tuple[str, str] | None = None
) -> Callable[[Any], KeyCheck]:
    """A mapping's key check: ``grammar`` (``allowed`` says it), and with ``reserved``,
    (what the keys are called, the prefix dockyard keeps for itself)."""

    def check(key: Any) -> KeyCheck:
        if not isinstance(key, str) or not grammar.fullmatch(key):
            return allowed, False
        if reserved is not None and key.startswith(reserved[1]):
            return f"{reserved[0]} outside {reserved[1]}*, which dockyard sets itself", True
        return None, True

    return check


_env_key = _key_rule(v.ENV_NAME, v.ENV_NAME_ALLOWED, ("names", RESERVED_ENV_PREFIX))
_label_key = _key_rule(v.LABEL_KEY, v.LABEL_KEY_ALLOWED, ("keys", RESERVED_LABEL_PREFIX))
_arg_key = _key_rule(
    v.ENV_NAME, "build arg names made of letters, digits and '_', not starting with a digit"
)


EnvVars = Annotated[
    dict[str, v.Text],
    WrapValidator(_keys_checked(_env_key, "visible in docker inspect and to every process")),
]
Labels = Annotated[
    dict[str, v.Text], WrapValidator(_keys_checked(_label_key, "visible in docker inspect"))
]
BuildArgs = Annotated[
    dict[str, v.Text], WrapValidator(_keys_checked(_arg_key, "kept in the image's history"))
]


MAX_SECRET_NAMES = 64
"""The most secrets one session has."""


def _secret_names(value: Any) -> Any:
    if not isinstance(value, list):
        return value
    if len(value) > MAX_SECRET_NAMES:
        raise v.refuse(f"a list of at most {MAX_SECRET_NAMES} secret names")
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
