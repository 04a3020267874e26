"""Lookup plugin: the paths of dockyard's host modules, as the collection carries them."""

from __future__ import annotations

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase
from ansible_collections.dockyard.agents.plugins.module_utils.host_package import package_path

DOCUMENTATION = r"""
name: host_package
short_description: Paths of dockyard's host modules carried by this collection
description:
  - Returns the absolute path of each named file of dockyard's package (the host library
    C(dockyard.host) and the modules it imports, standard library only, and the manifest
    schema), read from their one home, the package's C(components/) directory, which the
    collection ships. The role host_common installs them on hosts with it.
  - A name that leaves the package, or a file the collection does not carry, fails the lookup.
options:
  _terms:
    description: File names relative to the package, e.g. C(host/engine.py).
    required: true
    type: list
    elements: str
"""

EXAMPLES = r"""
- name: Show where the host library's entry module is
  ansible.builtin.debug:
    msg: "{{ lookup('dockyard.agents.host_package', 'host/__init__.py') }}"
"""

RETURN = r"""
_raw:
  description: Absolute paths on the controller, one per term.
  type: list
  elements: path
"""


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        paths = []
        for term in terms:
            try:
                paths.append(str(package_path(str(term))))
            except ValueError as error:
                raise AnsibleLookupError(str(error)) from None
        return paths
