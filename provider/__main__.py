"""Entry point of dockyard's component provider (``main`` in PulumiPlugin.yaml).

Pulumi runs ``python provider <engine address> ...`` in the plugin's virtualenv, which it
creates from requirements.txt (this checkout, installed as ``dockyard``).
"""

from dockyard.provider import main

main()
