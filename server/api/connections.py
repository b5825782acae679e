"""Connection hygiene for uvicorn: deadlines for every moment a connection makes the server wait on its client.

uvicorn closes idle keep-alive connections after ``keep_alive_timeout_s`` and answers 503 past ``limit_concurrency``,
but any byte from the client cancels its keep-alive timer and nothing else times a client out. A connection that
sends headers one byte a minute, declares a body and never sends it, or keeps trickling the unread body of a request
the server already refused (a 401 answers before any body is read) holds its slot for ever, and ``limit_concurrency``
such sockets make the server answer 503 to everyone. :func:`h11_protocol` adds three deadlines (:class:`Deadlines`)
to uvicorn's own h11 protocol class; nothing else about the protocol changes:

- **headers** (overall): a request's line and headers must be complete within ``header_s`` of the connection
  opening or of the previous response ending (keep-alive idle included);
- **unread body** (overall): after a response, the rest of a request body the app did not read (a refused,
  unauthenticated one) is read and dropped for at most ``unread_body_s``, so a client that sent a body before
  reading the answer still gets the answer, then the connection is closed;
- **gap** (between bytes): whenever the server waits for the client (its headers, a body the app is reading,
  leftovers, or taking the bytes of a response), the client may stay silent for at most ``gap_s``. A body the app
  reads has no overall deadline: an upload over a slow link is legitimate as long as it keeps moving. While the
  server itself is busy (a request being handled, reading paused because the app has not taken the body yet, a
  ``100-continue`` not yet sent) the client owes nothing and the gap does not run.

One timer per connection, re-armed at the next deadline; bytes received only move deadlines later, so most of them
touch no timer.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..config import Settings


@dataclass(frozen=True)
class Deadlines:
    """How long, in seconds, a client may keep the server waiting (see the module docstring)."""

    header_s: float
    gap_s: float
    unread_body_s: float

    @classmethod
    def of(cls, config: Settings) -> Deadlines:
        return cls(config.header_timeout_s, config.read_timeout_s, config.unread_body_timeout_s)


class _WatchedFlow(FlowControl):
    """uvicorn's flow control, telling the protocol each time the app asks for more of the body: the client's
    silence counts from then, not from a time the server itself was not reading."""

    def __init__(self, transport: asyncio.Transport, on_resume: Callable[[], None]) -> None:
        super().__init__(transport)
        self._on_resume = on_resume

    def resume_reading(self) -> None:
        self._on_resume()
        super().resume_reading()


def h11_protocol(deadlines: Deadlines) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection whose client misses one of ``deadlines``."""

    class DeadlineH11Protocol(H11Protocol):
        _timer: asyncio.TimerHandle | None = None
        _quiet_since = 0.0
        """Start of the client's current silence: its last byte, or the last moment the server began waiting."""
        _answered_at = 0.0
        """When the connection opened or its last response ended: the start of the overall deadlines."""

        # uvicorn's H11Protocol narrows asyncio's BaseTransport to the Transport it is always given; so must we.
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.flow = _WatchedFlow(transport, self._waiting_from_now)
            self._quiet_since = self._answered_at = self.loop.time()
            self._arm()

        def data_received(self, data: bytes) -> None:
            self._quiet_since = self.loop.time()
            super().data_received(data)
            if self._between_requests():  # leftovers may just have ended: the (shorter) header deadline applies
                self._arm()

        def on_response_complete(self) -> None:
            self._quiet_since = self._answered_at = self.loop.time()
            super().on_response_complete()  # may parse a pipelined request, starting a new cycle
            self._arm()

        def pause_writing(self) -> None:
            self._waiting_from_now()  # the client has this long to start taking the response again
            super().pause_writing()

        def resume_writing(self) -> None:
            self._waiting_from_now()
            super().resume_writing()

        def handle_websocket_upgrade(self, event: h11.Request) -> None:
            self._disarm()  # the transport belongs to the websocket protocol from now on
            super().handle_websocket_upgrade(event)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _waiting_from_now(self) -> None:
            self._quiet_since = self.loop.time()

        def _between_requests(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _owes_bytes(self) -> bool:
            """Whether the server is waiting on the client now: for bytes of a request, or to take a response's."""
            if self.flow.write_paused:
                return True
            if self.flow.read_paused or self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
                return False
            return self._between_requests() or not self.cycle.waiting_for_100_continue

        def _deadline(self, now: float) -> float:
            deadline = self._quiet_since + deadlines.gap_s if self._owes_bytes() else now + deadlines.gap_s
            if self._between_requests():
                overall = deadlines.header_s if self.conn.their_state is h11.IDLE else deadlines.unread_body_s
                deadline = min(deadline, self._answered_at + overall)
            return deadline

        def _arm(self) -> None:
            self._disarm()
            if not self.transport.is_closing():
                self._timer = self.loop.call_at(self._deadline(self.loop.time()), self._check)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _check(self) -> None:
            self._timer = None
            if self.transport.is_closing():
                return
            now = self.loop.time()
            if self._deadline(now) <= now:
                self.logger.debug("closing a connection from %s: its client missed a deadline", self.client)
                self.transport.abort()  # close() would first wait to send what a stalled reader never takes
            else:
                self._arm()

    return DeadlineH11Protocol


def uvicorn_config(app: Any, config: Settings, **kwargs: Any) -> uvicorn.Config:
    """The uvicorn settings of a server: connection limits and timeouts from ``config``."""
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        http=h11_protocol(Deadlines.of(config)),
        limit_concurrency=config.limit_concurrency,
        timeout_keep_alive=config.keep_alive_timeout_s,
        **kwargs,
    )


def raise_open_file_limit() -> None:
    """Let this process hold as many descriptors as the hard limit allows (the soft default is often 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else max(soft, 65536), hard))
