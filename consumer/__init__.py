"""quantum-ops execution service: a Redis Streams consumer for trade intents."""

__version__ = "0.5.0"
