"""A TCP proxy in front of PostgreSQL that loses a statement's answer after the server committed it.

Armed with a marker (bytes the statement's parameters carry, such as a session id), the proxy finds
the first client message holding it, lets it reach the server, then holds back everything the server
answers until the server's ``ReadyForQuery``. An autocommit statement in the extended protocol is
committed when the server processes ``Sync``, before it sends ``ReadyForQuery``; so when that message
has arrived the statement is committed, and the proxy then closes both sides without forwarding a
byte of the answer: "committed, but the client never heard back". It speaks just enough of the wire
protocol to find message boundaries in the server's answer (connect with ``sslmode=disable``).
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

__all__ = ["CuttingProxy"]

_READY_FOR_QUERY = ord("Z")


class CuttingProxy:
    """Forwards 127.0.0.1:<port> to ``host:port``; :meth:`arm` makes it cut one connection as above."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._marker: bytes | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.cut = asyncio.Event()
        """Set once a connection was cut after the server's ``ReadyForQuery`` for the marked message."""

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def arm(self, marker: bytes) -> None:
        """Cut the connection whose next client message contains ``marker``, once it is committed."""
        self._marker = marker
        self.cut.clear()

    def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(client_reader, client_writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(*self._target)
        self._writers |= {client_writer, server_writer}
        marked = asyncio.Event()

        async def client_to_server() -> None:
            tail = b""
            while chunk := await client_reader.read(65536):
                marker = self._marker
                if marker is not None and marker in tail + chunk:
                    self._marker = None
                    marked.set()  # from here on the server's answer is held back
                tail = chunk[-64:]
                server_writer.write(chunk)
                await server_writer.drain()

        async def server_to_client() -> None:
            held = b""
            while chunk := await server_reader.read(65536):
                if not marked.is_set():
                    client_writer.write(chunk)
                    await client_writer.drain()
                    continue
                held += chunk
                if _holds_ready_for_query(held):
                    self.cut.set()
                    return  # committed: drop the answer and both connections

        try:
            pumps = [asyncio.ensure_future(client_to_server()), asyncio.ensure_future(server_to_client())]
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            for writer in (client_writer, server_writer):
                self._writers.discard(writer)
                writer.transport.abort()
                with contextlib.suppress(OSError, asyncio.CancelledError):
                    await writer.wait_closed()


def _holds_ready_for_query(data: bytes) -> bool:
    """Whether ``data`` (server messages from a message boundary on) contains a whole ReadyForQuery."""
    offset = 0
    while offset + 5 <= len(data):
        kind = data[offset]
        length = int.from_bytes(data[offset + 1 : offset + 5], "big")
        if offset + 1 + length > len(data):
            return False
        if kind == _READY_FOR_QUERY:
            return True
        offset += 1 + length
    return False
