"""Real rendezvous servers on loopback for the tests (in this process, or as a child process),
and raw-socket helpers to speak to them byte by byte."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, ParamSpec

from cosmicai.constants import ENV_RENDEZVOUS_SECRET
from cosmicai.rendezvous.server import RendezvousServer
from cosmicai.rendezvous.server.config import ServerConfig
from cosmicai.rendezvous.wire.framing import HEADER, HEADER_SIZE
from cosmicai.rendezvous.wire.messages import Message, decode
from harness.net import LOOPBACK as LOOPBACK

SECRET = b"test-deployment-secret-0123456789"

#: Short deadlines so that expiry tests take a fraction of a second.
FAST = ServerConfig(
    host=LOOPBACK,
    port=0,
    health_port=0,
    secret=SECRET,
    hello_timeout=1.0,
    idle_timeout=2.0,
    tcpunch_name_settle=0.05,
    tcpunch_wait=5.0,
    max_pair_wait=5.0,
    max_world_deadline=5.0,
    shutdown_grace=0.5,
)

P = ParamSpec("P")


#: The event loop factory ``async_test`` runs tests on; None is asyncio's own loop. The
#: ``loop`` fixture of tests/rendezvous sets it to uvloop's for the tests marked ``uvloop``.
LOOP_FACTORY: list[Callable[[], asyncio.AbstractEventLoop] | None] = [None]


def async_test(fn: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an async test in its own event loop (pytest fixtures still apply)."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        with asyncio.Runner(loop_factory=LOOP_FACTORY[0]) as runner:
            runner.run(fn(*args, **kwargs))

    return run


@asynccontextmanager
async def running_server(**overrides: Any) -> AsyncIterator[RendezvousServer]:
    async with RendezvousServer(replace(FAST, **overrides)) as server:
        yield server


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Wait for the server to reach a state (a synchronisation point, not a timing check).

    Fails the test with an AssertionError naming ``what`` when the state is not reached
    within ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    limit = loop.time() + timeout
    while not condition():
        if loop.time() >= limit:
            raise AssertionError(f"not reached within {timeout:g} s: {what}")
        await asyncio.sleep(0.005)


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(LOOPBACK, port)


async def read_frame(reader: asyncio.StreamReader) -> Message:
    length, message_type = HEADER.unpack(await reader.readexactly(HEADER_SIZE))
    return decode(message_type, await reader.readexactly(length - 1))


async def read_to_eof(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed)."""
    try:
        async with asyncio.timeout(timeout):
            return await reader.read()
    except ConnectionResetError:
        return b""


def reset_on_close(writer: asyncio.StreamWriter) -> None:
    """Make close() send a RST, as a crashed client's kernel would."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class ServerProcess:
    """``python -m cosmicai.rendezvous serve`` in a child process on loopback, its JSON log
    lines (stderr) read as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.log: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cosmicai.rendezvous", "serve",
            "--host", LOOPBACK, "--port", "0", "--health-port", "0", *args,
            stderr=subprocess.PIPE,
            env={**os.environ, ENV_RENDEZVOUS_SECRET: SECRET.decode(), **(env or {})},
        )  # fmt: skip
        return cls(process)

    async def wait_for(self, event: str, timeout: float = 20.0) -> dict[str, Any]:
        assert self.process.stderr is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await self.process.stderr.readline()
                if not line:
                    raise AssertionError(f"server exited before {event!r}: {self.log}")
                entry: dict[str, Any] = json.loads(line)
                self.log.append(entry)
                if entry["event"] == event:
                    return entry

    async def stop(self, signum: signal.Signals) -> int:
        self.process.send_signal(signum)
        return await self.wait_exit()

    async def wait_exit(self) -> int:
        await self.wait_for("stopped")
        async with asyncio.timeout(10):
            return await self.process.wait()
