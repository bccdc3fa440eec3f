"""Event ids derived from content, for integrations whose framework names its writes itself.

An adapter that turns a framework's write (LangGraph's ``put_writes`` for a task and index, an SDK's
item number) into an event can give that event an id computed from what identifies the write; a
repeated write then carries the same id, and the store recognizes it (an idempotent retry, or
skipped with ``skip_existing=True``). The ids are stable: the same parts give the same id in every
process and every release.
"""

from __future__ import annotations

import hashlib
from uuid import UUID

from kern_events.errors import InvalidArgumentError

__all__ = ["EVENT_ID_NAMESPACE", "event_id_for"]

EVENT_ID_NAMESPACE = UUID("6f1c2b1e-4e0a-5d36-9a43-6b65726e2d65")
"""The namespace of :func:`event_id_for` (fixed forever: changing it would change every derived id)."""

_KINDS = {str: b"s", bytes: b"b", int: b"i"}


def event_id_for(*parts: str | bytes | int) -> UUID:
    """A deterministic event id from content parts: a UUID version 5 (SHA-1) under
    :data:`EVENT_ID_NAMESPACE`.

    Each part is framed by its kind and its length, so ``("ab", "c")``, ``("a", "bc")``, ``("1",)``
    and ``(1,)`` all give different ids. Parts are ``str`` (UTF-8), ``bytes`` or ``int`` (not ``bool``);
    anything else, or no part at all, raises :class:`~kern_events.errors.InvalidArgumentError`.
    """
    if not parts:
        raise InvalidArgumentError("parts", "give at least one part to derive an event id from")
    name = bytearray()
    for index, part in enumerate(parts):
        kind = _KINDS.get(type(part))
        if kind is None:
            raise InvalidArgumentError(
                f"parts[{index}]", f"expected str, bytes or int, got {type(part).__qualname__}: {part!r:.80}"
            )
        if isinstance(part, str):
            try:
                data = part.encode()
            except UnicodeEncodeError:
                raise InvalidArgumentError(
                    f"parts[{index}]", "a string part must be valid UTF-8 (it holds a lone surrogate)"
                ) from None
        elif isinstance(part, int):
            data = str(part).encode()
        else:
            data = part
        name += kind + len(data).to_bytes(8, "big") + data
    digest = hashlib.sha1(EVENT_ID_NAMESPACE.bytes + name, usedforsecurity=False).digest()
    return UUID(bytes=digest[:16], version=5)
