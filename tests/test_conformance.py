"""The conformance suite (kern_events.testing) on each of our backends, through the ``backend``
fixture in conftest.py."""

from __future__ import annotations

from kern_events.testing import ConformanceSuite


class TestConformance(ConformanceSuite):
    """Every conformance test, once per backend."""
