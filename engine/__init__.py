"""An event-time rules engine for Pub/Sub business events."""

__version__ = "0.1.0"
