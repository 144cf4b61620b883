"""The package version, in one place (read by setup.cfg and the heartbeat)."""

__version__ = "0.1.0"
