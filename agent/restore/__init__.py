"""Restoring checkpoints: the restorer, file restore, chunk sources, the in-place swap, the
hub's orders and their jobs."""
