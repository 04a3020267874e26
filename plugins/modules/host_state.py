#!/usr/bin/python
"""Ansible module: compare a host with the state a dockyard role manages, in one call.

Read-only. The roles run it first and skip their change tasks when it finds no drift, so
an unchanged host costs one round trip per role instead of one per file, package and
check; any difference it finds (a package gone, a file edited, a mode changed, a link
moved, a check failing) sends the role through its normal tasks, which repair it."""

from __future__ import annotations

DOCUMENTATION = r"""
module: host_state
short_description: Report how a host differs from the state a dockyard role manages
description:
  - Checks packages (dpkg status), directories, files (SHA-1 of the content, mode, owner,
    group), symbolic links, paths that must be absent, and read-only commands that must
    succeed. Changes nothing; returns the differences found as C(drift).
options:
  packages:
    description: Debian packages that must be installed.
    type: list
    elements: str
    default: []
  directories:
    description: Directories that must exist, owned by O(owner):O(group), mode 0755.
    type: list
    elements: path
    default: []
  files:
    description: Regular files that must exist with this content, owned by O(owner):O(group).
    type: list
    elements: dict
    default: []
    suboptions:
      path: {description: File., type: path, required: true}
      checksum: {description: SHA-1 of the content (hex)., type: str, required: true}
      mode: {description: Octal mode., type: str, default: "0644"}
  links:
    description: Symbolic links that must point at O(links[].src).
    type: list
    elements: dict
    default: []
    suboptions:
      path: {description: Link., type: path, required: true}
      src: {description: Target., type: path, required: true}
  absent:
    description: Paths that must not exist.
    type: list
    elements: path
    default: []
  checks:
    description: Read-only commands that must exit 0 (and print O(checks[].stdout_contains)).
    type: list
    elements: dict
    default: []
    suboptions:
      argv: {description: Command and arguments (no shell)., type: list, elements: str, required: true}
      stdout_contains: {description: Text the output must contain., type: str, default: ""}
  owner:
    description: Owner of the directories and files.
    type: str
    default: root
  group:
    description: Group of the directories and files.
    type: str
    default: root
"""

EXAMPLES = r"""
- name: Compare the host with the health report's desired state
  dockyard.agents.host_state:
    packages: [python3, cron]
    files:
      - {path: /etc/dockyard/health.json, checksum: "{{ config_text | hash('sha1') }}"}
    checks:
      - {argv: [/usr/bin/python3, /usr/local/libexec/dockyard/health-report, --help]}
  register: state
"""

RETURN = r"""
drift:
  description: One line per difference; empty when the host is in the desired state.
  type: list
  elements: str
  returned: always
"""

import grp
import hashlib
import os
import pwd
import stat

from ansible.module_utils.basic import AnsibleModule


def _owner_drift(path, info, owner, group):
    problems = []
    try:
        actual_owner = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        actual_owner = str(info.st_uid)
    try:
        actual_group = grp.getgrgid(info.st_gid).gr_name
    except KeyError:
        actual_group = str(info.st_gid)
    if (actual_owner, actual_group) != (owner, group):
        problems.append(f"{path}: owned by {actual_owner}:{actual_group}, not {owner}:{group}")
    return problems


def _mode_drift(path, info, mode):
    actual = stat.S_IMODE(info.st_mode)
    if actual != int(mode, 8):
        return [f"{path}: mode {actual:04o}, not {mode}"]
    return []


def _stat(path):
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _sha1(path):
    digest = hashlib.sha1()  # noqa: S324 - the checksum Ansible's copy module compares
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def package_drift(module, packages):
    if not packages:
        return []
    rc, out, err = module.run_command(
        ["dpkg-query", "-W", "-f=${db:Status-Abbrev} ${Package}\\n", *packages]
    )
    if rc not in (0, 1) and not out:
        return [f"dpkg-query failed ({rc}): {err.strip()}"]
    installed = {
        line.split()[-1] for line in out.splitlines() if line.startswith("ii ") and line.split()
    }
    return [f"package {name} is not installed" for name in packages if name not in installed]


def path_drift(params):
    owner, group = params["owner"], params["group"]
    drift = []
    for path in params["directories"]:
        info = _stat(path)
        if info is None or not stat.S_ISDIR(info.st_mode):
            drift.append(f"{path}: not a directory")
            continue
        drift += _mode_drift(path, info, "0755")
        drift += _owner_drift(path, info, owner, group)
    for file in params["files"]:
        path, info = file["path"], _stat(file["path"])
        if info is None or not stat.S_ISREG(info.st_mode):
            drift.append(f"{path}: not a regular file")
            continue
        if _sha1(path) != file["checksum"]:
            drift.append(f"{path}: content differs")
        drift += _mode_drift(path, info, file["mode"])
        drift += _owner_drift(path, info, owner, group)
    for link in params["links"]:
        path, info = link["path"], _stat(link["path"])
        if info is None or not stat.S_ISLNK(info.st_mode):
            drift.append(f"{path}: not a symbolic link")
        elif os.readlink(path) != link["src"]:
            drift.append(f"{path}: points at {os.readlink(path)}, not {link['src']}")
    drift += [f"{path}: should not exist" for path in params["absent"] if os.path.lexists(path)]
    return drift


def check_drift(module, checks):
    drift = []
    for check in checks:
        try:
            rc, out, _err = module.run_command(check["argv"], handle_exceptions=False)
        except OSError as exc:  # a command that is not there at all
            drift.append(f"{' '.join(check['argv'])}: {exc}")
            continue
        if rc != 0:
            drift.append(f"{' '.join(check['argv'])}: exit {rc}")
        elif check["stdout_contains"] not in out:
            drift.append(f"{' '.join(check['argv'])}: output lacks {check['stdout_contains']!r}")
    return drift


def main():
    module = AnsibleModule(
        argument_spec={
            "packages": {"type": "list", "elements": "str", "default": []},
            "directories": {"type": "list", "elements": "path", "default": []},
            "files": {
                "type": "list",
                "elements": "dict",
                "default": [],
                "options": {
                    "path": {"type": "path", "required": True},
                    "checksum": {"type": "str", "required": True},
                    "mode": {"type": "str", "default": "0644"},
                },
            },
            "links": {
                "type": "list",
                "elements": "dict",
                "default": [],
                "options": {
                    "path": {"type": "path", "required": True},
                    "src": {"type": "path", "required": True},
                },
            },
            "absent": {"type": "list", "elements": "path", "default": []},
            "checks": {
                "type": "list",
                "elements": "dict",
                "default": [],
                "options": {
                    "argv": {"type": "list", "elements": "str", "required": True},
                    "stdout_contains": {"type": "str", "default": ""},
                },
            },
            "owner": {"type": "str", "default": "root"},
            "group": {"type": "str", "default": "root"},
        },
        supports_check_mode=True,
    )
    params = module.params
    drift = package_drift(module, params["packages"])
    drift += path_drift(params)
    drift += check_drift(module, params["checks"])
    module.exit_json(changed=False, drift=drift)


if __name__ == "__main__":
    main()
