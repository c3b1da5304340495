"""Source kinds: the registry and scan context (registry.py), one module per kind, chunking
and drift."""
