"""Entry point of dockyard's component provider (``main`` in PulumiPlugin.yaml).

Pulumi runs ``python provider <engine address> ...``: the checkout root goes on the path
so ``components`` imports from this checkout, whether or not the wheel is installed.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.provider import main

main()
