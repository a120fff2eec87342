"""What one server process allows a client: body size and read time, decoded pixels, images
decoded at once, connections, and how long a connection may take to send its request headers.

``ServerLimits`` holds the numbers (``pneumolab serve`` flags); the app applies the per-request
ones (:class:`BodyLimit`, :class:`DecodeSlots`), :func:`run_server` the per-connection ones;
:func:`check_listen_address` says before anything loads whether the server can listen where asked.
"""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import h11
from fastapi import HTTPException
from fastapi.responses import JSONResponse
from python_multipart.multipart import parse_options_header
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from pneumolab.allocator import release_large_buffers_when_freed
from pneumolab.errors import ConfigError


@dataclass(frozen=True)
class ServerLimits:
    """Bounds on what clients can make the server hold (memory, threads, sockets)."""

    max_upload_bytes: int = 20_000_000
    max_pixels: int = 50_000_000
    """Largest image (width x height) decoded; refused from its header, before decoding."""
    max_decodes: int = 2
    """Images decoded at once (a 16-bit 7000 x 7000 PNG holds ~250 MB while decoded)."""
    decode_wait_s: float = 10.0
    """How long a request waits for a decode slot before it gets 503 + Retry-After."""
    header_timeout_s: float = 10.0
    """A connection that has not sent a complete request head within this is closed."""
    body_timeout_s: float = 30.0
    """A request whose body has not fully arrived within this gets 408."""
    keep_alive_s: int = 5
    """Idle keep-alive connections are closed after this."""
    max_connections: int = 64
    """Open connections + requests in progress beyond which new requests get 503 (uvicorn)."""


def too_large_text(limit: int) -> str:
    """The message of a 413 answer for an upload over ``limit`` bytes."""
    return f"upload too large: the limit is {limit:,} bytes"


class BodyLimit:
    """ASGI middleware: 413 when a request body is (announced or turns out) larger than ``limit``,
    408 when it has not fully arrived ``timeout`` seconds after the request head. The body is
    counted as it streams in, so an oversized or endless upload is never read to its end."""

    def __init__(self, app: ASGIApp, limit: int, file_limit: int, timeout: float) -> None:
        self.app, self.limit, self.file_limit, self.timeout = app, limit, file_limit, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            response = JSONResponse({"detail": too_large_text(self.file_limit)}, status_code=413)
            return await response(scope, receive, send)
        received, complete = 0, False
        deadline = time.monotonic() + self.timeout

        async def counted() -> Message:
            nonlocal received, complete
            if complete:  # after the body: waiting for a disconnect is not bounded here
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), deadline - time.monotonic())
            except TimeoutError:  # FastAPI re-raises HTTPExceptions from body parsing
                raise HTTPException(
                    408, f"request body not received within {self.timeout:g} s"
                ) from None
            received += len(message.get("body", b""))
            complete = not message.get("more_body", False)
            if received > self.limit:
                raise HTTPException(413, too_large_text(self.file_limit))
            return message

        await self.app(scope, counted, send)


class ClosedMultipart:
    """ASGI middleware: 400 for a multipart body that ends before its closing boundary (an
    upload cut short). python-multipart drops such an unfinished part without a word, so the
    client was told to send the ``file`` part it had sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind, options = parse_options_header(dict(scope.get("headers", [])).get(b"content-type"))
        boundary = options.get(b"boundary")
        if scope["type"] != "http" or kind != b"multipart/form-data" or not boundary:
            return await self.app(scope, receive, send)
        close = b"--" + boundary + b"--"
        tail, closed = b"", False

        async def watched() -> Message:
            nonlocal tail, closed
            message = await receive()
            if message["type"] != "http.request":
                return message
            window = tail + message.get("body", b"")  # empty only while no byte has come
            closed = closed or close in window
            tail = window[-len(close) :]
            if window and not closed and not message.get("more_body", False):
                raise HTTPException(
                    400,
                    "malformed multipart body: it ends before its closing boundary "
                    f"({close.decode('latin-1')}); was the upload cut short?",
                )
            return message

        await self.app(scope, watched, send)


class DecodeSlots:
    """At most ``slots`` image decodes at once; a request that waits ``wait_s`` for one gets
    503 with ``Retry-After`` instead of queueing memory without bound."""

    def __init__(self, slots: int, wait_s: float) -> None:
        self._slots = threading.BoundedSemaphore(slots)
        self.wait_s = wait_s

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold a slot for the block; 503 when none frees up within ``wait_s``."""
        if not self._slots.acquire(timeout=self.wait_s):
            raise HTTPException(
                503,
                "busy decoding other images; retry shortly",
                headers={"Retry-After": str(max(1, math.ceil(self.wait_s / 2)))},
            )
        try:
            yield
        finally:
            self._slots.release()


def header_timeout_protocol(timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection that has not sent a complete request head
    ``timeout_s`` after it opened or after its last response (uvicorn itself waits forever,
    so a few hundred slow clients could hold every socket)."""

    class HeaderTimeoutH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_timer()

        def _arm_header_timer(self) -> None:
            waiting_on = self.cycle  # a new request replaces it

            def expire() -> None:
                idle = waiting_on is None or waiting_on.response_complete
                if self.cycle is waiting_on and idle and not self.transport.is_closing():
                    with suppress(h11.LocalProtocolError):
                        self.conn.send(h11.ConnectionClosed())
                    self.transport.close()

            self.loop.call_later(timeout_s, expire)

    return HeaderTimeoutH11Protocol


def uvicorn_config(app: ASGIApp, host: str, port: int, limits: ServerLimits, **options: Any) -> Any:
    """The ``uvicorn.Config`` that serves ``app`` under ``limits`` (header timeout, keep-alive,
    connections); ``options`` go to uvicorn as they are (log level...)."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=header_timeout_protocol(limits.header_timeout_s),
        timeout_keep_alive=limits.keep_alive_s,
        limit_concurrency=limits.max_connections,
        h11_max_incomplete_event_size=16 * 1024,
        **options,
    )


def check_listen_address(host: str, port: int) -> None:
    """ConfigError naming ``host:port`` where this machine cannot listen (a name that does not
    resolve, an address that is not its own, a port in use or reserved); a trial bind, released
    at once, so that ``pneumolab serve`` says so before it loads a model."""
    try:
        for family, *_, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            socket.create_server(address, family=family).close()  # each, as uvicorn binds
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def run_server(app: ASGIApp, host: str, port: int, limits: ServerLimits) -> None:
    """Serve ``app`` with uvicorn under ``limits`` until stopped (Ctrl+C)."""
    import uvicorn

    release_large_buffers_when_freed()
    uvicorn.Server(uvicorn_config(app, host, port, limits)).run()
