#!/usr/bin/python
"""Ansible module: deep-merge managed settings into a JSON or TOML file, keeping every key
the user set that the managed settings do not name. Idempotent: writes only when the
merged document differs from the file."""

from __future__ import annotations

DOCUMENTATION = r"""
module: config_merge
short_description: Merge managed settings into a JSON or TOML configuration file
description:
  - Reads O(path) (missing or empty means an empty document), deep-merges O(settings) into
    it (managed values win; mappings merge recursively; other keys are kept), and writes the
    result atomically only when it changed.
options:
  path:
    description: File to merge into.
    type: path
    required: true
  settings:
    description: Managed settings.
    type: dict
    required: true
  format:
    description: File format.
    type: str
    choices: [json, toml]
    default: json
extends_documentation_fragment: [files]
"""

EXAMPLES = r"""
- name: Merge dockyard's Claude Code settings
  config_merge:
    path: /config/claude/settings.json
    settings: {permissions: {deny: ["Read(/run/secrets/**)"]}}
    owner: agent
    mode: "0644"
"""

RETURN = r"""
changed_keys:
  description:
    - Dotted paths of the settings this run set or changed, without their values.
    - The rest of the file (the user's own settings, tokens among them) is never returned.
  type: list
  elements: str
  returned: success
"""

import json
import os
import re
import tempfile

from ansible.module_utils.basic import AnsibleModule

BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def changed_paths(before, after, prefix=()):
    """Dotted paths under which ``after`` differs from ``before`` (leaves, or a whole
    value where one side is not a mapping)."""
    paths = []
    for key, value in after.items():
        old = before.get(key, _MISSING) if isinstance(before, dict) else _MISSING
        if isinstance(value, dict) and isinstance(old, dict):
            paths += changed_paths(old, value, (*prefix, key))
        elif old is _MISSING or old != value:
            paths.append(".".join((*prefix, str(key))))
    return paths


_MISSING = object()


def deep_merge(base, managed):
    result = dict(base)
    for key, value in managed.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = deep_merge(result[key], value)
        else:
            result[key] = value
    return result


def toml_key(key):
    return key if BARE_KEY.match(key) else json.dumps(key)


def toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def dump_toml(document, prefix=()):
    scalars = [(k, v) for k, v in document.items() if not isinstance(v, dict)]
    tables = [(k, v) for k, v in document.items() if isinstance(v, dict)]
    lines = []
    if prefix and (scalars or not tables):
        lines.append("[" + ".".join(toml_key(p) for p in prefix) + "]")
    lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in scalars]
    for key, table in tables:
        if lines:
            lines.append("")
        lines.extend(dump_toml(table, (*prefix, key)))
    return lines


def load(path, fmt):
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if not text.strip():
        return {}
    if fmt == "json":
        document = json.loads(text)
    else:
        import tomllib

        document = tomllib.loads(text)
    if not isinstance(document, dict):
        raise ValueError("the top level is not an object")
    return document


def render(document, fmt):
    if fmt == "json":
        return json.dumps(document, indent=2) + "\n"
    return "\n".join(dump_toml(document)) + "\n"


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "settings": {"type": "dict", "required": True},
            "format": {"type": "str", "choices": ["json", "toml"], "default": "json"},
        },
        add_file_common_args=True,
        supports_check_mode=True,
    )
    path, fmt = module.params["path"], module.params["format"]
    try:
        current = load(path, fmt)
    except (ValueError, OSError) as exc:
        module.fail_json(msg=f"{path}: cannot read it as {fmt}: {exc}")
    merged = deep_merge(current, module.params["settings"])
    changed = merged != current or not os.path.exists(path)
    if changed and not module.check_mode:
        directory = os.path.dirname(path) or "."
        fd, tmp = tempfile.mkstemp(prefix=".merge-", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(render(merged, fmt))
        module.atomic_move(tmp, path)
    file_args = module.load_file_common_arguments(module.params)
    if os.path.exists(path):
        changed = module.set_fs_attributes_if_different(file_args, changed)
    module.exit_json(changed=changed, changed_keys=changed_paths(current, merged), path=path)


if __name__ == "__main__":
    main()
