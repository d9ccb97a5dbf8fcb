"""bems: energy monitoring for government buildings (shared core)."""

__version__ = "0.1.0"
