#!/usr/bin/env python3
"""The host's ``workspace-backup`` command: :mod:`dockyard.workspace_backup` (scheduled
backups, retention and checks, the idle monitor's and the refresh path's hook).

Installed, the package's host modules sit beside this launcher as ``dockyard/`` (host_common
installs them from components/): the script's directory is sys.path[0], so that copy is the
one imported. In the repository the checkout's package is ``dockyard`` in the virtualenv.
Standard library only.
"""

from __future__ import annotations

import sys

from dockyard.workspace_backup import main

if __name__ == "__main__":
    sys.exit(main())
