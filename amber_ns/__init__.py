"""Amber: backup and recovery for production AI at the edge."""

__version__ = "0.1.0"
