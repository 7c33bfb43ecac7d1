"""The health port: what ECS's health check and an operator see."""

from __future__ import annotations

import asyncio
import json

import pytest

from cosmicai.rendezvous.client import tcpunch_pair
from harness.rendezvous import LOOPBACK, async_test, running_server

pytestmark = pytest.mark.timeout(30)


async def http_get(port: int, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *headers = head.decode().split("\r\n")
    content_type = next(h.split(": ", 1)[1] for h in headers if h.startswith("Content-Type"))
    return int(status_line.split()[1]), content_type, body


@async_test
async def test_healthz_reports_status_and_counters() -> None:
    async with running_server() as server:
        # GIVEN one pairing done
        await asyncio.gather(
            tcpunch_pair(LOOPBACK, server.port, b"h"), tcpunch_pair(LOOPBACK, server.port, b"h")
        )
        # WHEN /healthz is read
        status, content_type, body = await http_get(server.health_port, "/healthz")
        # THEN it is 200 JSON with the counters
        report = json.loads(body)
        assert (status, content_type) == (200, "application/json")
        assert report["status"] == "ok" and report["auth"] is True and report["tcpunch"] is True
        assert report["counters"]["pairings_total"] == {"protocol=tcpunch": 1}
        assert report["counters"]["connections_total"] == 2
        assert "waiting" in report["counters"]


@async_test
async def test_metrics_are_prometheus_text() -> None:
    async with running_server() as server:
        status, content_type, body = await http_get(server.health_port, "/metrics")
        text = body.decode()
        assert status == 200 and content_type.startswith("text/plain")
        assert "# TYPE cosmicai_rendezvous_pairings_total counter" in text
        assert "cosmicai_rendezvous_connections_open 0" in text


@async_test
async def test_other_paths_and_methods_are_refused() -> None:
    async with running_server() as server:
        assert (await http_get(server.health_port, "/"))[0] == 404
        assert (await http_get(server.health_port, "/healthz", method="POST"))[0] == 405
