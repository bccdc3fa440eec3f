"""The conformance suite's test modules, one per area of the store's behaviour.

Each module holds plain pytest test functions that take a ``backend`` fixture (a
:class:`kern_events.testing.Backend`); :mod:`kern_events.testing` gathers them into test classes.
"""
