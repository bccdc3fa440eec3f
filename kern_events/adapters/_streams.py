"""Session ids of the helper streams adapters keep beside their sessions (one per run, for lookups by run id)."""

from __future__ import annotations

import hashlib

from kern_events._validate import MAX_ID_LENGTH

__all__ = ["stream_id"]


def stream_id(prefix: str, key: str) -> str:
    """``prefix + key`` as a session id; a key too long for an id is hashed."""
    session = prefix + key
    if len(session) > MAX_ID_LENGTH:
        session = prefix + "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    return session
