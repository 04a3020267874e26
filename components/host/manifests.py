"""The manifest rewrite on the host: a manifest changed on the host (new container id
after a refresh, new host ports after a restart) is validated against the shipped contract
v1 schema before it replaces the file. The schema is the package's own
(``dockyard/manifest.schema.json``, installed with these modules). With the ``jsonschema``
package importable the host validates with it; hosts rarely have it, so otherwise a small
validator of the keywords the shipped schema uses does the same job (:data:`VALIDATOR` says
which; a schema keyword it does not know is an error, never silently skipped). Standard
library only."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from ..files import read_json_object, write_json_atomic
from .errors import HostError, ManifestError, SchemaError

SCHEMA_NAME = "manifest.schema.json"
# The package's own copy, beside these modules' package: components/ in a checkout and in
# the collection, <library>/dockyard/ on a host (host_common installs it with them).
SCHEMA_CANDIDATES = (Path(__file__).resolve().parents[1] / SCHEMA_NAME,)


def schema_path() -> Path:
    for candidate in SCHEMA_CANDIDATES:
        if candidate.is_file():
            return candidate
    raise HostError(
        f"{SCHEMA_NAME} not found (looked in {', '.join(str(c.parent) for c in SCHEMA_CANDIDATES)})"
    )


@cache
def manifest_schema() -> dict[str, Any]:
    return json.loads(schema_path().read_text(encoding="utf-8"))


try:
    import jsonschema as _jsonschema
except ImportError:  # the usual case on a host: the system python3 without it
    _jsonschema = None

VALIDATOR = "jsonschema" if _jsonschema is not None else "stdlib"
"""Which validator :func:`validate_manifest` uses on this host."""


def manifest_problems(
    manifest: Any, schema: Mapping[str, Any] | None = None, validator: str | None = None
) -> list[str]:
    """Every violation of the schema (default: the shipped manifest schema), as
    ``path: message`` lines; empty when the manifest is valid."""
    schema = manifest_schema() if schema is None else schema
    if (validator or VALIDATOR) == "jsonschema":
        if _jsonschema is None:
            raise HostError("validator jsonschema is not allowed here (allowed: stdlib)")
        checker = _jsonschema.Draft202012Validator(schema)
        errors = sorted(checker.iter_errors(manifest), key=lambda e: list(e.absolute_path))
        return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors]
    problems: list[str] = []
    _check(manifest, schema, (), problems)
    return problems


def validate_manifest(manifest: Any, source: str = "manifest") -> None:
    """Raise :class:`ManifestError` naming every violation of the schema."""
    problems = manifest_problems(manifest)
    if problems:
        raise ManifestError(f"{source} is not a valid v1 manifest:\n  " + "\n  ".join(problems))


def rewrite_manifest(
    path: str | os.PathLike[str], change: Callable[[dict[str, Any]], None]
) -> bool:
    """Apply ``change`` to the manifest in ``path``; when that changed anything, validate
    the result against the schema and replace the file atomically. Returns whether the
    file was rewritten; an invalid result raises :class:`ManifestError` and the file is
    left as it was."""
    manifest = read_manifest(path)
    before = json.dumps(manifest, sort_keys=True)
    change(manifest)
    if json.dumps(manifest, sort_keys=True) == before:
        return False
    validate_manifest(manifest, str(path))
    write_json_atomic(path, manifest)
    return True


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    return read_json_object(path, ManifestError)


def manifest_for_container(manifest_dir: str, container_id: str) -> Path | None:
    """The manifest file in ``manifest_dir`` that describes container ``container_id``."""
    directory = Path(manifest_dir)
    if not manifest_dir or not directory.is_dir():
        return None
    for path in sorted(directory.glob("*.json")):
        try:
            manifest = read_manifest(path)
        except ManifestError:
            continue  # not ours to judge here: the inventory plugin names broken files
        container = manifest.get("container")
        if isinstance(container, dict) and container.get("id") == container_id:
            return path
    return None


# The keywords the stdlib validator checks, and those that only annotate.
_ANNOTATIONS = frozenset({"$schema", "$id", "$comment", "title", "description", "examples"})
_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    # JSON Schema counts 3.0 as an integer, as jsonschema does.
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and v.is_integer())
    ),
}


def _same(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1, 1 is 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if _TYPES["number"](a) and _TYPES["number"](b):
        return bool(a == b)
    return type(a) is type(b) and a == b


_KEYWORDS = frozenset(
    {
        "type", "const", "enum", "pattern", "minLength", "maxLength", "minimum", "maximum",
        "required", "properties", "additionalProperties", "items", "minItems", "maxItems",
        "uniqueItems",
    }
)  # fmt: skip


def _check(value: Any, schema: Mapping[str, Any], at: tuple[Any, ...], problems: list[str]) -> None:
    where = "/".join(map(str, at)) or "(top)"
    unknown = set(schema) - _ANNOTATIONS - _KEYWORDS
    if unknown:
        raise SchemaError(
            f"schema at {where}: keywords {sorted(unknown)} are not allowed "
            f"(allowed for the stdlib validator: {', '.join(sorted(_KEYWORDS))})"
        )
    problem = problems.append
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[name](value) for name in names):
            problem(f"{where}: {_show(value)} is not of type {' or '.join(map(repr, names))}")
    if "const" in schema and not _same(value, schema["const"]):
        problem(f"{where}: {_show(schema['const'])} was expected")
    if "enum" in schema and not any(_same(value, option) for option in schema["enum"]):
        problem(f"{where}: {_show(value)} is not one of {schema['enum']!r}")
    if isinstance(value, str):
        # JSON Schema patterns are unanchored searches: what the schema anchors is anchored.
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problem(f"{where}: {_show(value)} does not match {schema['pattern']!r}")
        if len(value) < schema.get("minLength", 0):
            problem(f"{where}: {_show(value)} is shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problem(f"{where}: {_show(value)} is longer than {schema['maxLength']}")
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            problem(f"{where}: {value!r} is less than the minimum of {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problem(f"{where}: {value!r} is greater than the maximum of {schema['maximum']}")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                problem(f"{where}: {key!r} is a required property")
        for key, item in value.items():
            if key in properties:
                _check(item, properties[key], (*at, key), problems)
            elif schema.get("additionalProperties") is False:
                problem(f"{where}: additional property {key!r} is not allowed")
            elif isinstance(schema.get("additionalProperties"), dict):
                _check(item, schema["additionalProperties"], (*at, key), problems)
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            problem(f"{where}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            problem(f"{where}: more than {schema['maxItems']} items")
        if schema.get("uniqueItems") and any(
            _same(a, b) for i, a in enumerate(value) for b in value[i + 1 :]
        ):
            problem(f"{where}: {_show(value)} has non-unique elements")
        for index, item in enumerate(value):
            if "items" in schema:
                _check(item, schema["items"], (*at, index), problems)


def _show(value: Any) -> str:
    return json.dumps(value)[:80]


def iso_millis(moment: datetime) -> str:
    """The manifest's time format: ISO-8601 UTC with milliseconds."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
