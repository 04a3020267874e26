"""Where a stack's configuration comes from: one entry per source, each giving a StackConfig.

- :func:`parse`: Pulumi's shape, full keys (``dockyard:environments``) and the keys stored
  as secrets; :func:`from_pulumi` reads the running stack's and parses them;
- :func:`stack_file`: a ``Pulumi.<stack>.yaml`` (:func:`from_stack_file` reads one into
  Pulumi's shape);
- :func:`from_host_settings`: a host's settings (stack keys without the namespace), for
  what needs the host's configuration but no session;
- :func:`from_request`: a host's settings plus one environment: a one-environment stack.

All of them end in one validation: secret names are separated from settings, the settings
are validated with the typed model (which holds every rule), and :class:`ConfigError` lists
every problem at once. How a source names its keys to its user is an input (``name``, a
:data:`~.messages.KeyName`): a request's problems read ``request.container.ports[1]`` from
the start, never by rewriting the stack's messages afterwards. Only this package spells the
namespace (:data:`dockyard.contract.NAMESPACE`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from . import messages
from .base import NAMESPACE
from .errors import ConfigError
from .messages import KeyName, Problem, key_path
from .scope import Scope, SecretHint, stack_secret_hint
from .stack import TOP_LEVEL_KEYS, StackConfig
from .values import ENV_NAME

KEY_LIKE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}", re.ASCII)
ENVIRONMENTS = "environments"
HOST_EXCLUDED = frozenset({"cwd", ENVIRONMENTS})
"""Stack keys a host's settings do not have (a request brings its own)."""


def _is_secret_name(name: str) -> bool:
    return bool(ENV_NAME.fullmatch(name)) and name.upper() == name and not name.isdigit()


def config_key(name: str) -> str:
    """The full Pulumi config key of a stack key or secret name (``dockyard:<name>``)."""
    return f"{NAMESPACE}:{name}"


def host_settings(document: Mapping[Any, Any]) -> dict[str, Any]:
    """A host settings document's keys as stack keys: written with or without the
    namespace (``dockerHost`` or ``dockyard:dockerHost``)."""
    return {str(key).removeprefix(NAMESPACE + ":"): value for key, value in document.items()}


def _validated(
    settings: Mapping[str, Any],
    *,
    stack: str,
    cwd: Any,
    stored_secrets: Iterable[str] = (),
    check_secrets: bool = True,
    name: KeyName = key_path,
    secret_hint: SecretHint = stack_secret_hint,
    host: bool = False,
) -> tuple[StackConfig | None, list[Problem]]:
    """The one validation every source ends in: ``settings`` maps stack keys (no namespace)
    and secret names to values; ``stored_secrets`` are the names stored as secrets.
    ``host``: the settings are a host's (keys without the namespace, no secrets in them)."""
    stored = set(stored_secrets)
    problems: list[Problem] = []
    data: dict[str, Any] = {"stack": stack, "cwd": cwd}
    secret_names: set[str] = set()
    for key, value in settings.items():
        if _is_secret_name(key) and host and key not in stored:
            problems.append(
                messages.problem(
                    (key,),
                    "<redacted> is a secret in the host settings (allowed: host-wide keys only; "
                    f"a session's secrets: {secret_hint(key)})",
                    name,
                )
            )
        elif _is_secret_name(key):
            secret_names.add(key)
            if key not in stored:
                problems.append(
                    messages.problem(
                        (key,),
                        "<redacted> is stored as plain config (allowed: secrets only; run "
                        f"`pulumi config set --secret {key} <value>`)",
                        name,
                    )
                )
        elif key in TOP_LEVEL_KEYS:
            data[key] = value
        else:
            # A key is shown when it reads like a configuration key, not a pasted value.
            plain = KEY_LIKE.fullmatch(key) and not messages.looks_like_credential(key)
            if host:
                known = [k for k in TOP_LEVEL_KEYS if k not in HOST_EXCLUDED]
                allowed = ", ".join(known)
            else:
                known = list(TOP_LEVEL_KEYS)
                allowed = (
                    f"{', '.join(config_key(k) for k in known)}, or an UPPER_CASE secret name "
                    "set with `pulumi config set --secret`"
                )
            problems.append(
                messages.problem(
                    (key if plain else "<this key>",),
                    f"unknown key (allowed: {allowed}{messages.suggest(key, known)})",
                    name,
                )
            )
    scope = Scope(
        secret_names=frozenset(secret_names), check_secrets=check_secrets, secret_hint=secret_hint
    )
    config: StackConfig | None = None
    try:
        config = StackConfig.model_validate(data, context=scope)
    except ValidationError as exc:
        problems.extend(messages.located(exc, StackConfig, name))
    except Exception as exc:  # a rule that escaped its guard: still a problem, never a traceback
        problems.append(
            messages.problem(
                (),
                f"the configuration could not be read ({type(exc).__name__}); "
                "(allowed: the forms documented in docs/stacks.md)",
                name,
            )
        )
    problems.extend(_credentials_in_plain(data, problems, name, secret_hint))
    return config, problems


# Mappings whose credentials the model refuses itself (with the key's own fix).
_CHECKED_MAPPINGS = frozenset({"env", "labels", "args"})


def _credentials_in_plain(
    data: Mapping[str, Any], found: list[Problem], name: KeyName, secret_hint: SecretHint
) -> list[Problem]:
    """A credential-looking string anywhere in plain configuration (an image reference, a
    Docker host URL, a profile...) is a problem of its own, unless its key has one already."""
    named = {p.text.split(": ", 1)[0] for p in found}
    extra: list[Problem] = []

    def walk(value: Any, loc: tuple[int | str, ...], depth: int) -> None:
        if depth > 12 or (loc and loc[-1] in _CHECKED_MAPPINGS):
            return
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(item, (*loc, str(key)), depth + 1)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, (*loc, index), depth + 1)
        elif messages.looks_like_credential(value) and name(loc) not in named:
            extra.append(
                messages.problem(
                    loc,
                    f"{messages.describe(value)} is not allowed (allowed: no credential in "
                    f"plain configuration; give it as a secret: {secret_hint('<NAME>')})",
                    name,
                )
            )

    for key, value in data.items():
        if key not in ("stack", "cwd") and not _is_secret_name(key):
            walk(value, (key,), 0)
    return extra


def _checked(
    settings: Mapping[str, Any], *, stack: str, first: Sequence[str] = (), **options: Any
) -> StackConfig:
    """:func:`_validated` (``options`` are its own), the config or :class:`ConfigError`
    naming every problem: the source's own (``first``), then the stack's in key order."""
    config, problems = _validated(settings, stack=stack, **options)
    if first or problems or config is None:
        raise ConfigError(stack, [*first, *messages.lines(problems)])
    return config


def parse(
    raw: Mapping[str, Any],
    *,
    stack: str,
    cwd: str,
    secret_keys: Iterable[str] = (),
    check_secrets: bool = True,
    name: KeyName = key_path,
) -> StackConfig:
    """Validate the namespace's config of ``stack``, in Pulumi's shape.

    ``raw`` maps full keys (``dockyard:environments``) to decoded values, as Pulumi holds
    them (keys of other namespaces are not ours); ``secret_keys`` names the keys stored
    with ``--secret``. ``check_secrets=False`` skips "secret not set" (for previews that
    never read a secret). Raises :class:`ConfigError` with every problem found.
    """
    secret_keys = {str(key) for key in secret_keys}
    settings: dict[str, Any] = {}
    for key, value in raw.items():
        namespace, _, short = str(key).partition(":")
        if namespace == NAMESPACE:
            settings[short] = value
    stored = {short for short in settings if config_key(short) in secret_keys}
    return _checked(
        settings,
        stack=stack,
        cwd=cwd,
        stored_secrets=stored,
        check_secrets=check_secrets,
        name=name,
    )


def from_pulumi() -> StackConfig:
    """Parse the running stack's config. The only reader of Pulumi config."""
    # Late: the Pulumi SDK is slow to load and only a running Pulumi program needs it.
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


STACK_FILE_KEYS = frozenset({"config", "secretsprovider", "encryptedkey", "encryptionsalt"})
"""The top-level keys of a ``Pulumi.<stack>.yaml`` (Pulumi's own; ours live under config)."""
STACK_FILE_FORM = "a YAML mapping with a `config:` mapping of dockyard:<key> entries"


def from_stack_file(path: str, label: str | None = None) -> tuple[dict[str, Any], set[str]]:
    """Raw config and secret keys of a ``Pulumi.<stack>.yaml``, in Pulumi's shape (a key
    without a namespace is ours). A file that is not YAML or not a stack file's shape (no
    ``config:`` mapping, empty, a JSON request) is a :class:`ConfigError` naming the file
    as ``label`` (else by its path)."""
    where = label or path
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        reason = getattr(exc, "problem", None) or "a syntax error"
        raise ConfigError(
            "stack", [f"{where}: not YAML{at}: {reason} (allowed: {STACK_FILE_FORM})"]
        ) from None
    if document is None:
        raise ConfigError("stack", [f"{where}: empty (allowed: {STACK_FILE_FORM})"])
    if not isinstance(document, dict):
        raise ConfigError(
            "stack",
            [f"{where}: {messages.describe(document)} (allowed: {STACK_FILE_FORM})"],
        )
    problems: list[str] = []
    others = [str(k) for k in document if str(k) not in STACK_FILE_KEYS]
    if others:
        ours = any(k.startswith(NAMESPACE + ":") or k in TOP_LEVEL_KEYS for k in others)
        problems.append(
            f"{where}: {len(others)} key{'s' if len(others) != 1 else ''} outside `config:`"
            + (" (dockyard keys belong under `config:`)" if ours else "")
            + f" (allowed: {STACK_FILE_FORM})"
        )
    config = document.get("config")
    if "config" not in document:
        problems.append(f"{where}: no `config:` mapping (allowed: {STACK_FILE_FORM})")
    elif config is not None and not isinstance(config, dict):
        problems.append(f"{where}: config is {messages.describe(config)} (allowed: a mapping)")
    if problems:
        raise ConfigError("stack", problems)
    raw: dict[str, Any] = {}
    secret_keys: set[str] = set()
    for key, value in (config or {}).items():
        full = str(key) if ":" in str(key) else config_key(str(key))
        if isinstance(value, dict) and set(value) == {"secure"}:
            secret_keys.add(full)
        raw[full] = value
    return raw, secret_keys


def stack_name(path: str) -> str:
    """The stack a ``Pulumi.<stack>.yaml`` is for."""
    return Path(path).name.removeprefix("Pulumi.").removesuffix(".yaml")


def stack_file(
    path: str,
    *,
    check_secrets: bool = True,
    cwd: str | None = None,
    label: str | None = None,
) -> StackConfig:
    """The stack of a ``Pulumi.<stack>.yaml``: named after the file, its project directory
    the file's (unless ``cwd``). A file that cannot be read is a :class:`ConfigError` whose
    line names it as ``label`` (e.g. the flag that gave it), else by its path."""
    try:
        raw, secret_keys = from_stack_file(path, label)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError("stack", [f"{label or path}: cannot be read ({reason})"]) from None
    except UnicodeDecodeError:
        raise ConfigError(
            "stack", [f"{label or path}: not UTF-8 text (allowed: {STACK_FILE_FORM})"]
        ) from None
    return parse(
        raw,
        stack=stack_name(path),
        cwd=str(Path(path).resolve().parent) if cwd is None else cwd,
        secret_keys=secret_keys,
        check_secrets=check_secrets,
    )


def from_host_settings(
    settings: Mapping[str, Any],
    *,
    stack: str,
    cwd: str,
    check_secrets: bool = False,
    name: KeyName = key_path,
) -> StackConfig:
    """A host's settings (stack keys without the namespace) as a stack without
    environments: what an image build or a destroyed session's backups need."""
    return _checked(
        {k: v for k, v in settings.items() if k != ENVIRONMENTS},
        stack=stack,
        cwd=cwd,
        check_secrets=check_secrets,
        name=name,
        host=True,
    )


MISSING: Any = object()
"""A request without a project directory (``cwd``)."""


def from_request(
    settings: Mapping[str, Any],
    environment: Mapping[str, Any],
    *,
    stack: str,
    cwd: Any = MISSING,
    secret_names: Iterable[str] = (),
    check_secrets: bool = True,
    name: KeyName = key_path,
    secret_hint: SecretHint = stack_secret_hint,
) -> StackConfig:
    """A host's ``settings`` (stack keys without the namespace) plus one ``environment``
    (the environment model's keys): a one-environment stack, judged by the same rules as
    a stack file. ``cwd`` is the request's project directory; ``secret_names`` the secrets
    the caller can supply (checked like a stack's; ``check_secrets=False`` skips "secret
    not set" as :func:`parse` does; ``secret_hint`` says how the caller supplies one).
    Every key is named by ``name``.
    Raises :class:`ConfigError` naming every problem at once: the request's own (host
    settings that declare environments, no ``cwd``) first, then the stack's in key order.
    """
    first: list[str] = []
    if ENVIRONMENTS in settings:
        first.append(
            f"{name((ENVIRONMENTS,))}: not allowed (allowed: host-wide keys only; "
            "sessions come from requests)"
        )
    data = {k: v for k, v in settings.items() if k != ENVIRONMENTS}
    data[ENVIRONMENTS] = [environment]
    if cwd is not MISSING:
        data["cwd"] = cwd
    else:
        first.append(f"{name(('cwd',))}: missing (allowed: the absolute project directory)")
    supplied = set(secret_names)
    data.update(dict.fromkeys(supplied, "<supplied>"))
    return _checked(
        data,
        stack=stack,
        first=first,
        cwd=data.get("cwd", "/") if isinstance(data.get("cwd"), str) else "/",
        stored_secrets=supplied,
        check_secrets=check_secrets,
        name=name,
        secret_hint=secret_hint,
        host=True,
    )
