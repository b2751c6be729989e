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
    """One timer per connection, re-armed only when it fires (not once per
    request: a keep-alive client sends thousands)."""

    deadline_s: float = 30.0
    _timer: asyncio.TimerHandle | None = None
    _waiting_since: float | None = None  # when the connection began to owe us a request

    def _arm(self) -> None:
        self._waiting_since = self.loop.time()
        if self._timer is None:
            self._timer = self.loop.call_at(self._waiting_since + self.deadline_s, self._check)

    def _check(self) -> None:
        self._timer = None
        since = self._waiting_since
        if since is None:
            return  # a request is in: _arm starts over when its response ends
        if self.loop.time() - since < self.deadline_s:
            self._timer = self.loop.call_at(since + self.deadline_s, self._check)
        elif not self.transport.is_closing():
            logger.info("closed a connection that sent no whole request within %.0fs", self.deadline_s)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_complete(self) -> None:
        self._waiting_since = None  # the whole request is in: the app's own timeouts take over
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # kept alive: the next request gets the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)


def read_deadline_protocol(deadline_s: float) -> type[ReadDeadlineProtocol]:
    return type("ReadDeadlineProtocol", (ReadDeadlineProtocol,), {"deadline_s": deadline_s})
