"""Backends of the :class:`~kern_events.store.EventStore` protocol, and what they share."""
