"""dockyard Pulumi program: one isolated agent environment per session of this stack.

The program body arrives with the components (typed config, AgentImage,
AgentEnvironment, manifest); until then it exports what it would manage so `pulumi up`
on a fresh stack is a valid no-op.
"""

import pulumi

pulumi.export("environments", {})
