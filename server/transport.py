"""The HTTP edge below ASGI: a deadline for receiving each request.

uvicorn closes idle keep-alive connections, but a client that opens a socket
and then sends its headers (or body) a byte at a time (slowloris) holds it,
and a slot in the process, forever: the ASGI app is not even called before
the headers are complete, so no middleware can see it. This protocol gives a
connection `deadline_s` to deliver each whole request (headers and body),
from the moment it connects or its previous response ended; then it closes.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger("lemur.transport")


class ReadDeadlineProtocol(HttpToolsProtocol):
    deadline_s: float = 30.0
    _deadline: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.deadline_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            logger.info("closed a connection that sent no whole request within %.0fs", self.deadline_s)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_complete(self) -> None:
        self._disarm()  # the whole request is in: the app's own timeouts take over
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # kept alive: the next request gets the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def read_deadline_protocol(deadline_s: float) -> type[ReadDeadlineProtocol]:
    return type("ReadDeadlineProtocol", (ReadDeadlineProtocol,), {"deadline_s": deadline_s})
