"""Connection hygiene for uvicorn: a deadline for each request's headers, and the settings that go with it.

uvicorn closes idle keep-alive connections after ``timeout_keep_alive`` and answers 503 past
``limit_concurrency``, but it has no deadline for a request's line and headers: a connection that sends nothing,
or one header byte a minute, holds a file descriptor for ever, and a few hundred of them make the server refuse
everyone (``Too many open files``). :func:`h11_protocol` adds that deadline to uvicorn's own h11 protocol class;
nothing else about the protocol changes. Bodies are not covered: a slow upload is a legitimate upload.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .config import Settings


def h11_protocol(header_timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection whose next request's headers are not complete in time."""

    class HeaderDeadlineH11Protocol(H11Protocol):
        _header_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_deadline()  # the next request on this connection gets its own deadline

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
            super().connection_lost(exc)

        def _arm_header_deadline(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
            cycle = self.cycle  # a new request replaces it once its headers are parsed
            self._header_deadline = self.loop.call_later(header_timeout, self._header_deadline_passed, cycle)

        def _header_deadline_passed(self, cycle_at_arming: Any) -> None:
            self._header_deadline = None
            # Still the same (finished or absent) request and no new request line + headers parsed since.
            idle = cycle_at_arming is None or cycle_at_arming.response_complete
            waiting = idle and self.cycle is cycle_at_arming and self.conn.their_state is h11.IDLE
            if waiting and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadlineH11Protocol


def uvicorn_config(app: Any, config: Settings, **kwargs: Any) -> uvicorn.Config:
    """The uvicorn settings of a server: connection limits and timeouts from ``config``."""
    return uvicorn.Config(
        app, host=config.host, port=config.port, http=h11_protocol(config.header_timeout),
        limit_concurrency=config.limit_concurrency, timeout_keep_alive=config.timeout_keep_alive, **kwargs,
    )


def raise_open_file_limit() -> None:
    """Let this process hold as many descriptors as the hard limit allows (the soft default is often 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else max(soft, 65536),
                                                    hard))
