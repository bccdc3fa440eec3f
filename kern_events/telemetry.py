"""OpenTelemetry for kern-events (``pip install 'kern-events[otel]'``): off until :func:`instrument`.

Telemetry is opt-in and process-wide, like an OpenTelemetry instrumentor: ``instrument()`` turns it
on for every store, db and session of the process (those made before the call too), and
:func:`uninstrument` turns it off. Off, nothing imports OpenTelemetry and each instrumented call
costs one attribute look-up; opentelemetry-api being installed (other packages bring it) turns
nothing on by itself. Spans and metrics go to the providers given, else to the global ones
(``opentelemetry.trace.set_tracer_provider``; one set after ``instrument()`` is used too).

Spans: ``kern_events.append``, ``append_many``, ``read``, ``read_all`` (client spans), one
``kern_events.subscribe`` span per subscription pass that delivers events, and one span per flushed
run step (``kern_events.run.start``, ``.step``, ``.pause``, ``.complete``, ``.fail``, ``.cancel``,
with a span event per message and tool call), with the session id (``gen_ai.conversation.id``), the
version, the event count and the backend (``kern_events.backend``, ``db.system.name``). Metrics:
``kern_events.append.duration`` (s), ``kern_events.append.conflicts``,
``kern_events.group_commit.batch_size`` and ``kern_events.feed.lag`` (s: how old the first event a
subscription's pass delivers is). No message text, tool argument or result is ever recorded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kern_events import _telemetry
from kern_events.errors import UnsupportedError

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

__all__ = ["instrument", "is_instrumented", "uninstrument"]


def instrument(*, tracer_provider: TracerProvider | None = None, meter_provider: MeterProvider | None = None) -> None:
    """Turn telemetry on for the whole process (again: with these providers instead).

    Raises :class:`~kern_events.errors.UnsupportedError` when opentelemetry-api is not installed.
    """
    try:
        from kern_events._otel import OtelProbe
    except ImportError as error:
        raise UnsupportedError(
            "telemetry", "kern-events without opentelemetry-api (pip install 'kern-events[otel]')"
        ) from error
    _telemetry.probe = OtelProbe(tracer_provider=tracer_provider, meter_provider=meter_provider)


def uninstrument() -> None:
    """Turn telemetry off (calls already under way finish their spans)."""
    _telemetry.probe = None


def is_instrumented() -> bool:
    """Whether :func:`instrument` has turned telemetry on."""
    return _telemetry.probe is not None
