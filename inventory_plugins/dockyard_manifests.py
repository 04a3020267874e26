"""Ansible inventory plugin: one host per dockyard environment, from manifests (R-HOST-4).

Sources, in a file named ``*.dockyard_manifests.yml``::

    plugin: dockyard_manifests
    manifest_dirs:                  # <cwd>/.companion/cloud/environments of each project
      - /home/me/shop/.companion/cloud/environments
    stack_outputs:                  # files of `pulumi stack output --json -s <stack>`
      - /srv/dockyard/team-outputs.json
    docker_host: ssh://agent@agents.team.example   # optional: the engine they run on
    remote_user: agent              # user for docker exec (see below)

Each host is the environment's container name, reached with
``community.docker.docker``; groups: ``dockyard``, ``claude``/``codex`` and
``stack_<stack>``. Host variables: ``dockyard_manifest`` (the whole manifest),
``dockyard_session_id``, ``dockyard_backend``, ``dockyard_stack`` (None, and no
``stack_`` group, for an environment another writer of contract v1 named),
``dockyard_port_mappings``. A missing or invalid manifest fails, naming the file.

``remote_user`` defaults to ``agent``: environments drop every capability, so root
inside one cannot write the agent's files (nor anything else it does not own).
"""

from __future__ import annotations

import json
import os
import re

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin

DOCUMENTATION = r"""
name: dockyard_manifests
short_description: dockyard environments as hosts, from manifests or stack outputs
description:
  - One host per environment manifest (contract v1), reached over the docker connection.
options:
  plugin:
    description: Marks this file as a source for this plugin.
    required: true
    choices: [dockyard_manifests]
  manifest_dirs:
    description: Directories of manifest files (<sessionId>.json).
    type: list
    elements: path
    default: []
  stack_outputs:
    description: JSON files written by `pulumi stack output --json` (with an environments output).
    type: list
    elements: path
    default: []
  docker_host:
    description: Docker host the containers run on (passed to docker exec as -H).
    type: str
  remote_user:
    description: User for docker exec (environments drop all capabilities; root there owns nothing useful).
    type: str
    default: agent
"""

SAFE_GROUP = re.compile(r"[^A-Za-z0-9_]")
ID_PREFIX = "dockyard-"


def stack_of(environment_id, session_id):
    """The stack of an environment dockyard created, read back from its id (the inverse of
    components.environment.resource_prefix: dockyard-<stack>-<session>); None for an
    environment whose id has another shape (another writer of contract v1)."""
    suffix = f"-{session_id}"
    if not (environment_id.startswith(ID_PREFIX) and environment_id.endswith(suffix)):
        return None
    stack = environment_id[len(ID_PREFIX) : -len(suffix)]
    return stack or None


class InventoryModule(BaseInventoryPlugin):
    NAME = "dockyard_manifests"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(
            ("dockyard_manifests.yml", "dockyard_manifests.yaml")
        )

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        # The installed package (pip install dockyard; the repository is installed as it too).
        from dockyard import manifest as contract

        found = []
        for directory in self.get_option("manifest_dirs"):
            if not os.path.isdir(directory):
                raise AnsibleParserError(
                    f"{path}: manifest_dirs entry {directory} is not a directory"
                )
            for name in sorted(os.listdir(directory)):
                if name.endswith(".json"):
                    file = os.path.join(directory, name)
                    found.append((file, self._load(contract, file)))
        for file in self.get_option("stack_outputs"):
            try:
                with open(file, encoding="utf-8") as handle:
                    outputs = json.load(handle)
            except (OSError, json.JSONDecodeError) as exc:
                raise AnsibleParserError(
                    f"{file}: not a readable `pulumi stack output --json` file ({exc})"
                ) from None
            environments = outputs.get("environments") if isinstance(outputs, dict) else None
            if not isinstance(environments, dict):
                raise AnsibleParserError(
                    f"{file}: has no 'environments' output (allowed: the JSON of `pulumi stack output --json`)"
                )
            for session, manifest in environments.items():
                source = f"{file}#environments.{session}"
                try:
                    contract.validate(manifest, source)
                except contract.ManifestError as exc:
                    raise AnsibleParserError(str(exc)) from None
                found.append((source, manifest))
        self._add_hosts(found)

    @staticmethod
    def _load(contract, file):
        try:
            return contract.load(file)
        except contract.ManifestError as exc:
            raise AnsibleParserError(str(exc)) from None

    def _add_hosts(self, found):
        seen = {}
        self.inventory.add_group("dockyard")
        for source, manifest in found:
            host = manifest["container"]["name"]
            if host in seen:
                raise AnsibleParserError(
                    f"{source}: container {host} is also described by {seen[host]}"
                )
            seen[host] = source
            session = manifest["sessionId"]
            stack = stack_of(manifest["environmentId"], session)
            groups = [manifest["backend"]]
            if stack is not None:
                groups.append("stack_" + SAFE_GROUP.sub("_", stack))
            self.inventory.add_host(host, group="dockyard")
            for group in groups:
                self.inventory.add_group(group)
                self.inventory.add_child(group, host)
            variables = {
                "ansible_connection": "community.docker.docker",
                "ansible_user": self.get_option("remote_user"),
                "ansible_python_interpreter": "/usr/bin/python3",
                "dockyard_manifest": manifest,
                "dockyard_session_id": session,
                "dockyard_backend": manifest["backend"],
                "dockyard_stack": stack,
                "dockyard_port_mappings": manifest["container"]["portMappings"],
            }
            if self.get_option("docker_host"):
                variables["ansible_docker_extra_args"] = f"-H {self.get_option('docker_host')}"
            for key, value in variables.items():
                self.inventory.set_variable(host, key, value)
