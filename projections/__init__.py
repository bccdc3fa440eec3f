"""The read side of kern-events: pure folds from records to views.

``session`` builds the session view (the fifteen fields runtimes read) from ``runs``' run views.
This package imports kern_events submodules (``kern_events.events``, ``kern_events.records``),
never names the package root loads lazily, so the two packages import in either order.
"""

from projections.history import history_messages, last_messages, runs_for_history
from projections.runs import (
    MessageView,
    RequirementStatus,
    RequirementView,
    RunStatus,
    RunView,
    ToolCallStatus,
    ToolCallView,
)
from projections.session import (
    SESSION_PROJECTION,
    SESSION_SCHEMA_VERSION,
    SessionFold,
    SessionSummary,
    SessionView,
    decode_view,
    encode_view,
    fold,
    fold_records,
)

__all__ = [
    "SESSION_PROJECTION",
    "SESSION_SCHEMA_VERSION",
    "MessageView",
    "RequirementStatus",
    "RequirementView",
    "RunStatus",
    "RunView",
    "SessionFold",
    "SessionSummary",
    "SessionView",
    "ToolCallStatus",
    "ToolCallView",
    "decode_view",
    "encode_view",
    "fold",
    "fold_records",
    "history_messages",
    "last_messages",
    "runs_for_history",
]
