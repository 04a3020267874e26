"""``python -m dockyard.cli``: the ``dockyard`` command."""

from . import main

main()
