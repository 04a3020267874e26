"""Where a stack's configuration comes from: Pulumi's config, or a stack file.

:func:`parse` is the only entry point that validates: it separates secret names from
settings, validates the settings with the typed model (which holds every rule), and
raises :class:`ConfigError` with every problem of the stack at once.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from . import messages
from .base import NAMESPACE
from .errors import ConfigError
from .scope import Scope
from .stack import TOP_LEVEL_KEYS, StackConfig
from .values import ENV_NAME

KEY_LIKE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}", re.ASCII)


def _is_secret_name(name: str) -> bool:
    return bool(ENV_NAME.fullmatch(name)) and name.upper() == name and not name.isdigit()


def parse(
    raw: Mapping[str, Any],
    *,
    stack: str,
    cwd: str,
    secret_keys: Iterable[str] = (),
    check_secrets: bool = True,
) -> StackConfig:
    """Validate the ``dockyard:`` config of ``stack``.

    ``raw`` maps full keys (``dockyard:environments``) to decoded values, as Pulumi holds
    them; ``secret_keys`` names the keys stored with ``--secret``. ``check_secrets=False``
    skips "secret not set" (for previews that never read a secret). Raises
    :class:`ConfigError` with every problem found.
    """
    secret_keys = {str(key) for key in secret_keys}
    problems: list[str] = []
    data: dict[str, Any] = {"stack": stack, "cwd": cwd}
    secret_names: set[str] = set()
    for key, value in raw.items():
        namespace, _, name = str(key).partition(":")
        if namespace != NAMESPACE:
            continue
        if _is_secret_name(name):
            secret_names.add(name)
            if key not in secret_keys:
                problems.append(
                    f"{NAMESPACE}:{name}: <redacted> is stored as plain config (allowed: secrets "
                    f"only; run `pulumi config set --secret {name} <value>`)"
                )
        elif name in TOP_LEVEL_KEYS:
            data[name] = value
        else:
            # A key is shown when it reads like a configuration key, not a pasted value.
            plain = KEY_LIKE.fullmatch(name) and not messages.looks_like_credential(name)
            problems.append(
                f"{NAMESPACE}:{name if plain else '<this key>'}: unknown key (allowed: "
                f"{', '.join(NAMESPACE + ':' + k for k in TOP_LEVEL_KEYS)}, or an UPPER_CASE "
                "secret name set with `pulumi config set --secret`"
                f"{messages.suggest(name, TOP_LEVEL_KEYS)})"
            )
    scope = Scope(secret_names=frozenset(secret_names), check_secrets=check_secrets)
    config: StackConfig | None = None
    try:
        config = StackConfig.model_validate(data, context=scope)
    except ValidationError as exc:
        problems.extend(messages.problems(exc, StackConfig))
    except Exception as exc:  # a rule that escaped its guard: still a problem, never a traceback
        problems.append(
            f"{NAMESPACE}: the configuration could not be read ({type(exc).__name__}); "
            "(allowed: the forms documented in docs/stacks.md)"
        )
    if problems:
        raise ConfigError(stack, sorted(problems, key=messages.natural_order))
    assert config is not None
    return config


def from_pulumi() -> StackConfig:
    """Parse the running stack's ``dockyard:`` config. The only reader of Pulumi config."""
    import pulumi
    from pulumi.runtime import config as runtime_config

    raw: dict[str, Any] = {}
    all_config = dict(runtime_config.CONFIG.get()) or dict(runtime_config.get_config_env() or {})
    for key, value in all_config.items():
        raw[key] = decode(value)
    secret_keys = {key for key in raw if runtime_config.is_config_secret(key)}
    secret_keys |= set(runtime_config.get_config_secret_keys_env())
    return parse(raw, stack=pulumi.get_stack(), cwd=os.getcwd(), secret_keys=secret_keys)


def decode(value: Any) -> Any:
    """Pulumi hands structured values over as JSON text."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            return value
    return value


def from_stack_file(path: str) -> tuple[dict[str, Any], set[str]]:
    """Raw config and secret keys of a ``Pulumi.<stack>.yaml`` (for tests and tooling)."""
    import yaml

    with open(path, encoding="utf-8") as handle:
        document = yaml.safe_load(handle) or {}
    raw: dict[str, Any] = {}
    secret_keys: set[str] = set()
    config = document.get("config") if isinstance(document, dict) else None
    for key, value in (config if isinstance(config, dict) else {}).items():
        full = str(key) if ":" in str(key) else f"{NAMESPACE}:{key}"
        if isinstance(value, dict) and set(value) == {"secure"}:
            secret_keys.add(full)
        raw[full] = value
    return raw, secret_keys
