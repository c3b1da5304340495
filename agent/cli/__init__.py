"""`amber-agent`: the parser (parser.py) and one module per command group."""

from amber.agent.cli.parser import main

__all__ = ["main"]
