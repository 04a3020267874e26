"""Configuration of the host scripts: a JSON object over a script's defaults, label
selectors and configured commands; anything else is refused naming the key, the value and
what is allowed (standard library only)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from ..contract import LABEL_KEY, SELECTOR_VALUE
from ..files import read_json_object
from .errors import ConfigError

# A label selector as the scripts take it (docker's `label=` filter): a key, or
# key=value with a value that is a name, a session id, a stack, "true" ...
SELECTOR_ALLOWED = (
    "a label key (lower-case letters, digits, '.', '_', '/', '-'; at most 128) or key=value "
    "(value: letters, digits, '.', '_', '/', ':', '-'; at most 255)"
)


def parse_selector(text: str) -> tuple[str, str | None]:
    """``key`` or ``key=value`` -> (key, value or None); anything else is a ConfigError."""
    if not isinstance(text, str):
        raise ConfigError(f"label selector: {text!r} is not allowed (allowed: {SELECTOR_ALLOWED})")
    key, sep, value = text.partition("=")
    if not LABEL_KEY.fullmatch(key) or (sep and not SELECTOR_VALUE.fullmatch(value)):
        raise ConfigError(
            f"label selector: {json.dumps(text)[:120]} is not allowed (allowed: {SELECTOR_ALLOWED})"
        )
    return key, (value if sep else None)


def check_command(key: str, command: Any, allow_empty: bool = True) -> None:
    """A configured command: an argv list of non-empty strings (``[]`` for none)."""
    if not isinstance(command, list) or not all(isinstance(a, str) and a for a in command):
        raise ConfigError(
            f"{key}: {json.dumps(command)[:120]} is not allowed (allowed: an argv list of "
            "non-empty strings)"
        )
    if not command and not allow_empty:
        raise ConfigError(f"{key}: [] is not allowed (allowed: a non-empty argv list)")


def _kind(default: Any) -> tuple[Callable[[Any], bool], str]:
    if isinstance(default, bool):
        return (lambda v: isinstance(v, bool)), "true or false"
    if isinstance(default, int):
        return (lambda v: isinstance(v, int) and not isinstance(v, bool)), "a whole number"
    if isinstance(default, float):
        return (
            lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        ), "a number"
    if isinstance(default, str):
        return (lambda v: isinstance(v, str)), "a string"
    if isinstance(default, list):
        return (lambda v: isinstance(v, list)), "a list"
    if isinstance(default, dict):
        return (lambda v: isinstance(v, dict)), "an object"
    return (lambda _v: True), "any value"


def load_config(
    path: str | None,
    defaults: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``defaults``, then the JSON object in ``path`` (if given), then the ``overrides``
    that are not None. Every key must be one of the defaults' and every value of the
    default's type (an int where a float is expected becomes a float)."""
    config = dict(defaults)
    source = path or "config"
    if path:
        config.update(read_json_object(path, ConfigError))
    config.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise ConfigError(
            f"{source}: unknown keys {unknown} (allowed: {', '.join(sorted(defaults))})"
        )
    for key, default in defaults.items():
        accepts, allowed = _kind(default)
        if not accepts(config[key]):
            raise ConfigError(
                f"{source}: {key}: {json.dumps(config[key])[:120]} is not allowed (allowed: {allowed})"
            )
        if isinstance(default, float):
            config[key] = float(config[key])
    return config
