"""The HTTP edge below ASGI: a deadline for receiving each request.

uvicorn closes idle keep-alive connections, but a client that opens a socket
and then sends its headers (or body) a byte at a time (slowloris) holds it,
and a slot in the process, forever: the ASGI app is not even called before
the headers are complete, so no middleware can see it. This protocol gives a
connection `deadline_s` to deliver each whole request (headers and body),
from the moment it connects or its previous response ended; then it closes.
A response sent before its request's body was read (an early 401 or 413)
closes the connection once sent.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger("lemur.transport")


class ReadDeadlineProtocol(HttpToolsProtocol):
    """One timer per connection, re-armed only when it fires (not once per
    request: a keep-alive client sends thousands).

    The connection owes us a request unless one is fully in and not yet
    answered: it counts requests received and responses sent, rather than
    trusting callback order. An early response (a 401 or 413 sent before the
    body was read) can end before its request does, and pipelined requests
    arrive before the previous response ends; either way the deadline runs
    exactly while nothing is being answered."""

    deadline_s: float = 30.0
    _timer: asyncio.TimerHandle | None = None
    _waiting_since: float | None = None  # when the connection began to owe us a request
    _received = 0  # requests whose last byte has arrived
    _answered = 0  # responses that have ended
    _lingering = False

    def _update(self) -> None:
        if self._received > self._answered:
            self._waiting_since = None  # a whole request is being answered: the app's own timeouts rule
        elif self._waiting_since is None:
            self._waiting_since = self.loop.time()
            if self._timer is None:
                self._timer = self.loop.call_at(self._waiting_since + self.deadline_s, self._check)

    def _check(self) -> None:
        self._timer = None
        since = self._waiting_since
        if since is None:
            return  # a request is in: _update arms again when its response ends
        if self.loop.time() - since < self.deadline_s:
            self._timer = self.loop.call_at(since + self.deadline_s, self._check)
        elif not self.transport.is_closing():
            logger.info("closed a connection that sent no whole request within %.0fs", self.deadline_s)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._update()

    def data_received(self, data: bytes) -> None:
        if not self._lingering:  # after an early answer, the rest is read and dropped
            super().data_received(data)

    def on_message_complete(self) -> None:
        self._received += 1
        self._update()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._answered += 1
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self._answered > self._received:
            self._linger()
        else:
            self._update()  # kept alive: the next request gets the same deadline

    def _linger(self) -> None:
        """The response went out before its request's body came in: close as
        nginx does. Send our FIN now (the client reads the whole answer), drop
        what it still sends, and close on its FIN or at the deadline. Closing
        at once, with its body unread, would reset the connection and could
        lose the answer on the client's side."""
        self._lingering = True
        self._waiting_since = self._waiting_since or self.loop.time()
        if self._timer is None:
            self._timer = self.loop.call_at(self._waiting_since + self.deadline_s, self._check)
        if self.transport.can_write_eof():
            self.transport.write_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)


def read_deadline_protocol(deadline_s: float) -> type[ReadDeadlineProtocol]:
    return type("ReadDeadlineProtocol", (ReadDeadlineProtocol,), {"deadline_s": deadline_s})
