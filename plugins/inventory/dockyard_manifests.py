"""Ansible inventory plugin: one host per dockyard environment, from manifests (R-HOST-4).

Sources, in a file whose name ends in ``dockyard_manifests.yml`` (or ``.yaml``)::

    plugin: dockyard.agents.dockyard_manifests   # or dockyard_manifests, in a checkout
    manifest_dirs:                  # <cwd>/.companion/cloud/environments of each project
      - /home/me/shop/.companion/cloud/environments
    stack_outputs:                  # files of `pulumi stack output --json -s <stack>`
      - /srv/dockyard/team-outputs.json
    docker_host: ssh://agent@agents.team.example   # optional: the engine they run on
    remote_user: agent              # user for docker exec (see below)
    keyed_groups:                   # Constructable: compose, groups, keyed_groups
      - key: dockyard_backend
        prefix: backend

Each host is the environment's container name, reached with
``community.docker.docker``; groups: ``dockyard``, ``claude``/``codex``,
``stack_<stack>`` and, in a several-host stack, ``host_<name>``. Host variables:
``dockyard_manifest`` (the whole manifest), ``dockyard_session_id``,
``dockyard_backend``, ``dockyard_stack`` (None, and no ``stack_`` group, for an
environment another writer of contract v1 named), ``dockyard_port_mappings``, and
``dockyard_host`` / ``dockyard_docker_host`` where a ``<sessionId>.host.json`` beside
the manifest names the environment's Docker host (it then reaches the container through
that engine). A missing or invalid manifest fails, naming the file.

``remote_user`` defaults to ``agent``: environments drop every capability, so root
inside one cannot write the agent's files (nor anything else it does not own).

Manifests are validated against the shipped schema with dockyard's stdlib host library
(``dockyard.host``: ``components/host/`` with the modules it imports, which the collection
carries from the package): the plugin runs in Ansible's own Python and needs no dockyard
package installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Set

from ansible.errors import AnsibleParserError
from ansible.module_utils.common.collections import is_sequence
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable
from ansible.utils.unsafe_proxy import wrap_var
from ansible_collections.dockyard.agents.plugins.module_utils.host_package import PACKAGE_DIR

DOCUMENTATION = r"""
name: dockyard_manifests
short_description: dockyard environments as hosts, from manifests or stack outputs
description:
  - One host per environment manifest (contract v1), reached over the docker connection.
  - Environments of several-host stacks are grouped by host and reached through its engine.
  - The inventory file's name must end in C(dockyard_manifests.yml) or C(dockyard_manifests.yaml)
    (for example C(team.dockyard_manifests.yml)); any other file is left to other plugins.
extends_documentation_fragment:
  - constructed
options:
  plugin:
    description: Marks this file as a source for this plugin.
    required: true
    choices: [dockyard_manifests, dockyard.agents.dockyard_manifests]
  manifest_dirs:
    description: Directories of manifest files (<sessionId>.json, beside <sessionId>.host.json).
    type: list
    elements: path
    default: []
  stack_outputs:
    description: JSON files written by `pulumi stack output --json` (with an environments output).
    type: list
    elements: path
    default: []
  docker_host:
    description: Docker host the containers run on (passed to docker exec as -H), unless a host file names another.
    type: str
  remote_user:
    description: User for docker exec (environments drop all capabilities; root there owns nothing useful).
    type: str
    default: agent
  running_only:
    description:
      - List only the environments whose container is running, as each container's engine
        reports it (C(docker ps), one call per engine); a stopped or removed environment is left
        out instead of failing the play. An engine that does not answer fails the inventory.
    type: bool
    default: false
"""

EXAMPLES = r"""
# team.dockyard_manifests.yml (the name must end in dockyard_manifests.yml or .yaml):
# every environment of one project, then
#   ansible-playbook -i team.dockyard_manifests.yml dockyard.agents.environments
plugin: dockyard.agents.dockyard_manifests
manifest_dirs:
  - /home/me/shop/.companion/cloud/environments
---
# fleet.dockyard_manifests.yml: a stack's environments on a remote engine, from
#   pulumi stack output --json -s team > /srv/dockyard/team-outputs.json
# grouped by backend (backend_claude, backend_codex), with a variable per host.
plugin: dockyard.agents.dockyard_manifests
stack_outputs:
  - /srv/dockyard/team-outputs.json
docker_host: ssh://agent@agents.team.example
keyed_groups:
  - key: dockyard_backend
    prefix: backend
compose:
  agent_home: "'/home/' ~ ansible_user"
"""

SAFE_GROUP = re.compile(r"[^A-Za-z0-9_]")
ID_PREFIX = "dockyard-"
# dockyard.contract.TENANT_NAMES after the prefix (tests/unit/test_contracts.py keeps it so).
TENANT_ID_PREFIX = ID_PREFIX + "t."
HOST_SUFFIX = ".host.json"
# The package's host modules (dockyard.host and what it imports, standard library only),
# where the collection carries them (module_utils/host_package.py). Loaded under a name of
# their own, so a dockyard installed in Ansible's Python (another version, perhaps) is never
# mixed in.
PACKAGE_NAME = "_dockyard_collection_package"


def stack_of(environment_id, session_id):
    """The stack of an environment dockyard created, read back from its id (the inverse of
    dockyard.contract's names: ``dockyard-<stack>-<session>``, and a tenant's session
    ``dockyard-t.<tenant>.<session>``, whose stack group is its tenant); None for an
    environment whose id has another shape (another writer of contract v1)."""
    tenant_suffix = f".{session_id}"
    if environment_id.startswith(TENANT_ID_PREFIX) and environment_id.endswith(tenant_suffix):
        return environment_id[len(TENANT_ID_PREFIX) : -len(tenant_suffix)] or None
    suffix = f"-{session_id}"
    if not (environment_id.startswith(ID_PREFIX) and environment_id.endswith(suffix)):
        return None
    stack = environment_id[len(ID_PREFIX) : -len(suffix)]
    return stack or None


TEMPLATE_CHARS = re.compile("[{}]")
ENGINE_TIMEOUT_S = 30


def make_unsafe(value):
    """``value`` with every string that could start a template marked unsafe, all the way
    down: manifests and host files are written on hosts and name what environments chose
    (ansible-core 2.16-2.18 would render a ``{{ ... }}`` in them; 2.19 trusts no plugin
    value anyway)."""
    if isinstance(value, Mapping):
        return {make_unsafe(k): make_unsafe(v) for k, v in value.items()}
    if isinstance(value, Set):
        return {make_unsafe(item) for item in value}
    if is_sequence(value):
        return type(value)(make_unsafe(item) for item in value)
    if isinstance(value, str) and TEMPLATE_CHARS.search(value):
        return wrap_var(value)
    return value


def running_containers(engine):
    """Names of the running containers of ``engine`` (None: the docker CLI's default)."""
    command = ["docker"] + (["-H", engine] if engine else []) + ["ps", "--format", "{{.Names}}"]
    where = engine or "the default Docker engine"
    try:
        listed = subprocess.run(
            command, capture_output=True, text=True, timeout=ENGINE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AnsibleParserError(f"running_only: cannot ask {where} ({exc})") from None
    if listed.returncode != 0:
        raise AnsibleParserError(
            f"running_only: {where} did not list its containers: {listed.stderr.strip()[-500:]}"
        )
    return set(listed.stdout.split())


def _host_library():
    """dockyard.host, from the package's files in this checkout or collection."""
    library = PACKAGE_DIR / "host" / "__init__.py"
    if not library.is_file():
        raise AnsibleParserError(f"dockyard's host library is missing ({library})")
    if PACKAGE_NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            PACKAGE_NAME, PACKAGE_DIR / "__init__.py", submodule_search_locations=[str(PACKAGE_DIR)]
        )
        if spec is None or spec.loader is None:
            raise AnsibleParserError(f"dockyard's package cannot be loaded from {PACKAGE_DIR}")
        package = importlib.util.module_from_spec(spec)
        # Registered before it runs: its modules import each other through sys.modules.
        sys.modules[PACKAGE_NAME] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"{PACKAGE_NAME}.host")


class InventoryModule(BaseInventoryPlugin, Constructable):
    NAME = "dockyard.agents.dockyard_manifests"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(
            ("dockyard_manifests.yml", "dockyard_manifests.yaml")
        )

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        host = _host_library()
        found = []
        for directory in self.get_option("manifest_dirs"):
            if not os.path.isdir(directory):
                raise AnsibleParserError(
                    f"{path}: manifest_dirs entry {directory} is not a directory"
                )
            for name in sorted(os.listdir(directory)):
                if name.endswith(".json") and not name.endswith(HOST_SUFFIX):
                    file = os.path.join(directory, name)
                    found.append((file, self._load(host, file), self._placement(host, file)))
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
                    host.validate_manifest(manifest, source)
                except host.ManifestError as exc:
                    raise AnsibleParserError(str(exc)) from None
                found.append((source, manifest, None))
        self._add_hosts(found)

    @staticmethod
    def _load(host, file):
        try:
            manifest = host.read_manifest(file)
            host.validate_manifest(manifest, file)
        except host.ManifestError as exc:
            raise AnsibleParserError(str(exc)) from None
        return manifest

    @staticmethod
    def _placement(host, file):
        """The sibling host file of a manifest (several-host stacks), validated, or None."""
        sibling = file[: -len(".json")] + HOST_SUFFIX
        if not os.path.exists(sibling):
            return None
        try:
            data = host.read_manifest(sibling)
        except host.ManifestError as exc:
            raise AnsibleParserError(str(exc)) from None
        valid = (
            set(data) == {"version", "sessionId", "host", "dockerHost"}
            and data["version"] == 1
            and isinstance(data["host"], str)
            and re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?", data["host"], re.ASCII)
            and isinstance(data["dockerHost"], str)
            and re.fullmatch(
                r"(unix|tcp|ssh|npipe)://[^\s;|&$`]{1,500}", data["dockerHost"], re.ASCII
            )
        )
        if not valid:
            raise AnsibleParserError(
                f"{sibling}: not a dockyard host file (allowed: version 1, sessionId, host, dockerHost)"
            )
        return data

    def _add_hosts(self, found):
        seen = {}
        strict = self.get_option("strict")
        running = {}  # engine -> names of its running containers, asked once
        self.inventory.add_group("dockyard")
        for source, manifest, placement in found:
            name = manifest["container"]["name"]
            if name in seen:
                raise AnsibleParserError(
                    f"{source}: container {name} is also described by {seen[name]}"
                )
            seen[name] = source
            engine = (placement or {}).get("dockerHost") or self.get_option("docker_host")
            if self.get_option("running_only"):
                if engine not in running:
                    running[engine] = running_containers(engine)
                if name not in running[engine]:
                    continue
            session = manifest["sessionId"]
            if placement is not None and placement["sessionId"] != session:
                raise AnsibleParserError(
                    f"{source}: its host file names session {placement['sessionId']}, not {session}"
                )
            stack = stack_of(manifest["environmentId"], session)
            groups = [manifest["backend"]]
            if stack is not None:
                groups.append("stack_" + SAFE_GROUP.sub("_", stack))
            if placement is not None:
                groups.append("host_" + SAFE_GROUP.sub("_", placement["host"]))
            self.inventory.add_host(name, group="dockyard")
            for group in groups:
                self.inventory.add_group(group)
                self.inventory.add_child(group, name)
            variables = {
                "ansible_connection": "community.docker.docker",
                "ansible_user": self.get_option("remote_user"),
                "ansible_python_interpreter": "/usr/bin/python3",
                "dockyard_manifest": manifest,
                "dockyard_session_id": session,
                "dockyard_backend": manifest["backend"],
                "dockyard_stack": stack,
                "dockyard_port_mappings": manifest["container"]["portMappings"],
                "dockyard_host": placement["host"] if placement else None,
                "dockyard_docker_host": placement["dockerHost"] if placement else None,
            }
            if engine:
                variables["ansible_docker_extra_args"] = f"-H {engine}"
            for key, value in variables.items():
                self.inventory.set_variable(name, key, make_unsafe(value))
            # Constructable: compose, groups, keyed_groups over these variables.
            hostvars = self.inventory.get_host(name).get_vars()
            self._set_composite_vars(self.get_option("compose"), hostvars, name, strict=strict)
            self._add_host_to_composed_groups(
                self.get_option("groups"), hostvars, name, strict=strict
            )
            self._add_host_to_keyed_groups(
                self.get_option("keyed_groups"), hostvars, name, strict=strict
            )
