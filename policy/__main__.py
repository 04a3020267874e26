"""The policy pack Pulumi runs: `pulumi preview --policy-pack policy` (PulumiPolicy.yaml).

Pulumi starts ``python policy <engine address>``: this folder is first on the path, so the
policies import as a plain module. Constructing the pack serves it until Pulumi stops it.
"""

from dockyard_policy import ENFORCEMENT, PACK_NAME, POLICIES
from pulumi_policy import PolicyPack

PolicyPack(name=PACK_NAME, policies=POLICIES, enforcement_level=ENFORCEMENT)
