"""Formats, crypto and wire messages. Pure: no I/O, no asyncio."""
