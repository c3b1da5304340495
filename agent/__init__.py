"""The edge agent: sources, chunking, journal, sync, restore executor."""
