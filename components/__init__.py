"""dockyard: Pulumi component resources for isolated AI coding agent environments."""
