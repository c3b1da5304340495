"""`amber-hub`: the parser (parser.py) and one module per command group."""

from amber.hub.cli.parser import main

__all__ = ["main"]
