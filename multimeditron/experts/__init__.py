"""Vision experts: the interface, the registry, checkpoint reading and one module per family."""
