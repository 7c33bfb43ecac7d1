"""The health port: ``GET /healthz`` (JSON status and counters) and ``GET /metrics``
(Prometheus text). A deliberately tiny HTTP/1.1 server: one request per connection, bounded
request size, a short deadline, and a cap on simultaneous connections, so it cannot be used to
exhaust the rendezvous server it reports on.

It listens on loopback unless told otherwise (the health check runs inside the task). Even
so it cannot be starved: at the cap, a new connection evicts the oldest one still waiting for
its request, so idle sockets cannot crowd out the health check, which sends its request at
once."""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from cosmicai import __version__
from cosmicai.rendezvous.server.metrics import Metrics

MAX_REQUEST_BYTES = 8192
#: The health check sends its request at once: an idle socket is dropped soon.
REQUEST_TIMEOUT = 2.0
MAX_CONNECTIONS = 32


class HealthServer:
    def __init__(
        self, metrics: Metrics, status: Callable[[], dict[str, Any]], host: str, port: int
    ) -> None:
        self._metrics = metrics
        self._status = status
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        #: Connections whose request has not arrived yet, oldest first.
        self._waiting: OrderedDict[asyncio.StreamWriter, None] = OrderedDict()
        self._started = time.monotonic()

    @property
    def port(self) -> int:
        assert self._server is not None, "the health server is not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def host(self) -> str:
        assert self._server is not None, "the health server is not started"
        return str(self._server.sockets[0].getsockname()[0])

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self._host, self._port, limit=MAX_REQUEST_BYTES, reuse_address=True
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def healthz(self) -> dict[str, Any]:
        return {
            **self._status(),
            "version": __version__,
            "uptime_seconds": round(time.monotonic() - self._started, 3),
            "counters": self._metrics.snapshot(),
        }

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        waiting = self._waiting
        while len(waiting) >= MAX_CONNECTIONS:
            oldest, _ = waiting.popitem(last=False)
            oldest.transport.abort()
        waiting[writer] = None
        try:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            except ConnectionError:
                return
            finally:
                waiting.pop(writer, None)
            status, content_type, body = self._respond(head)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    await writer.drain()
            except (TimeoutError, ConnectionError):
                return
        finally:
            writer.close()

    def _respond(self, head: bytes) -> tuple[str, str, bytes]:
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return "400 Bad Request", "text/plain", b"bad request\n"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method != b"GET":
            return "405 Method Not Allowed", "text/plain", b"only GET\n"
        if target == b"/healthz":
            report = self.healthz()
            status = "200 OK" if report.get("status") == "ok" else "503 Service Unavailable"
            return status, "application/json", json.dumps(report).encode()
        if target == b"/metrics":
            return "200 OK", "text/plain; version=0.0.4", self._metrics.prometheus().encode()
        return "404 Not Found", "text/plain", b"not found: try /healthz or /metrics\n"
