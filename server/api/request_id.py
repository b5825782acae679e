"""``x-fal-request-id`` on every response about a request, set in one place.

fal sends the header on every response that concerns a request. Routes that build their own response add it
themselves; a streamed response (the status stream is a generator) cannot, so this middleware adds it to any
response of a route whose path names a request and that did not set it.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-fal-request-id"


class RequestIdHeader:
    """ASGI middleware: the ``request_id`` path parameter, echoed as ``x-fal-request-id`` on 2xx responses."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_id(message: Message) -> None:
            # The router fills in path_params on this same scope by the time the response starts.
            request_id = scope.get("path_params", {}).get("request_id")
            if message["type"] == "http.response.start" and request_id and message["status"] < 300:
                headers = MutableHeaders(scope=message)
                headers.setdefault(REQUEST_ID_HEADER, request_id)
            await send(message)

        await self.app(scope, receive, send_with_id)
