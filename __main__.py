"""dockyard: one isolated agent environment per session of this stack.

The configuration is read and validated once (dockyard.config); a bad value stops the
program before any resource is registered, listing every problem of the stack. The
program itself is dockyard.program.run, shared with the per-session Automation API.
"""

from __future__ import annotations

import pulumi

from dockyard import config as stack_config
from dockyard import program

try:
    cfg = stack_config.from_pulumi()
except stack_config.ConfigError as error:
    raise pulumi.RunError(str(error)) from None

environments = program.run(cfg)
