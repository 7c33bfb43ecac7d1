"""Client of the native protocol: asyncio (``RendezvousClient``) and blocking
(``BlockingRendezvousClient``).

The communicator punches holes from the local port it used to reach this server, so the
client's socket always has SO_REUSEADDR and SO_REUSEPORT set, can be bound to a given local
address, and reports the local endpoint it used (``local_endpoint``) as the rank's private
endpoint unless told otherwise.

One request at a time per client; a client is not safe to share between tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NoReturn, TypeVar

from cosmicai.constants import DEFAULT_RENDEZVOUS_PORT
from cosmicai.exceptions import (
    RendezvousAuthError,
    RendezvousError,
    RendezvousProtocolError,
    RendezvousRefusedError,
    RendezvousTimeoutError,
    WorldIncompleteError,
)
from cosmicai.rendezvous.wire.auth import make_auth
from cosmicai.rendezvous.wire.endpoint import Endpoint
from cosmicai.rendezvous.wire.framing import (
    DEFAULT_MAX_RESPONSE_FRAME,
    HEADER,
    HEADER_SIZE,
    PREAMBLE,
    PREAMBLE_SIZE,
    PROTOCOL_VERSION,
    parse_preamble,
)
from cosmicai.rendezvous.wire.messages import (
    Accepted,
    AuthOk,
    Error,
    ErrorCode,
    Leave,
    Left,
    Message,
    Pair,
    Peer,
    PeerRecord,
    Register,
    World,
    decode,
    encode,
    error_name,
)

T = TypeVar("T")

#: Extra time a client waits beyond the server's own deadline before giving up on it.
DEADLINE_MARGIN = 5.0

_AUTH_CODES = {
    ErrorCode.AUTH_REQUIRED,
    ErrorCode.AUTH_BAD_MAC,
    ErrorCode.AUTH_EXPIRED,
    ErrorCode.AUTH_REPLAYED,
}
_PROTOCOL_CODES = {
    ErrorCode.MALFORMED_MESSAGE,
    ErrorCode.FRAME_TOO_LARGE,
    ErrorCode.UNKNOWN_MESSAGE_TYPE,
    ErrorCode.UNSUPPORTED_VERSION,
    ErrorCode.UNEXPECTED_MESSAGE,
}


@dataclass(frozen=True, slots=True)
class PairResult:
    name: str
    #: This client's endpoint as the server saw it (its NAT's public mapping).
    public: Endpoint
    peer_public: Endpoint
    peer_private: Endpoint | None


@dataclass(frozen=True, slots=True)
class WorldResult:
    job_id: str
    rank: int
    public: Endpoint
    #: One record per rank, in rank order: ``peers[r].rank == r``.
    peers: tuple[PeerRecord, ...]

    @property
    def size(self) -> int:
        return len(self.peers)


def _secret_bytes(secret: bytes | str | None) -> bytes | None:
    return secret.encode() if isinstance(secret, str) else secret


def raise_error(error: Error) -> NoReturn:
    """Raise the exception that names a server's ERROR."""
    text = f"{error.message} ({error_name(error.code)})"
    code = error.code
    if code in _AUTH_CODES:
        raise RendezvousAuthError(text, code)
    if code == ErrorCode.PAIR_TIMEOUT:
        raise RendezvousTimeoutError(text, code)
    if code == ErrorCode.WORLD_INCOMPLETE:
        raise WorldIncompleteError(text, code)
    if code in _PROTOCOL_CODES:
        raise RendezvousProtocolError(
            f"the server says this client broke the protocol: {text}", code
        )
    raise RendezvousRefusedError(text, code)


class RendezvousClient:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        server: str,
        max_frame_bytes: int = DEFAULT_MAX_RESPONSE_FRAME,
    ) -> None:
        """Use ``RendezvousClient.connect``."""
        self._reader = reader
        self._writer = writer
        self._server = server
        self._max_frame = max_frame_bytes
        self._header: bytes | None = None  # a frame header read before a cancellation
        self._pending: str | None = None  # what the outstanding request was ("pair"/"world")
        self._request: Pair | Register | None = None
        self._deadline = 0.0
        self.public_endpoint: Endpoint | None = None
        self.local_endpoint = Endpoint.from_sockaddr(writer.get_extra_info("sockname"))

    @property
    def server(self) -> str:
        """The server's host:port as given."""
        return self._server

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int = DEFAULT_RENDEZVOUS_PORT,
        *,
        secret: bytes | str | None = None,
        local_address: tuple[str, int] | None = None,
        timeout: float = 10.0,
        max_frame_bytes: int = DEFAULT_MAX_RESPONSE_FRAME,
    ) -> RendezvousClient:
        """Connect, exchange preambles and, with a ``secret``, authenticate.

        ``local_address`` binds the client's socket first (e.g. to a port the caller will
        punch holes from); SO_REUSEADDR/SO_REUSEPORT are set either way so that later sockets
        can share the local port.
        """
        server = f"{host}:{port}"
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                if local_address is not None:
                    wanted = socket.AF_INET6 if ":" in local_address[0] else socket.AF_INET
                    infos = [info for info in infos if info[0] == wanted] or infos
                family, _, proto, _, address = infos[0]
                sock = socket.socket(family, socket.SOCK_STREAM, proto)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if hasattr(socket, "SO_REUSEPORT"):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                    if local_address is not None:
                        sock.bind(local_address)
                    sock.setblocking(False)
                    await loop.sock_connect(sock, address)
                except BaseException:
                    sock.close()
                    raise
                reader, writer = await asyncio.open_connection(sock=sock)
        except TimeoutError:
            raise RendezvousTimeoutError(f"no rendezvous server answered at {server}") from None
        except OSError as exc:
            raise RendezvousError(f"cannot reach the rendezvous server at {server}: {exc}") from exc
        client = cls(reader, writer, server=server, max_frame_bytes=max_frame_bytes)
        try:
            async with asyncio.timeout(timeout):
                await client._handshake(_secret_bytes(secret))
        except TimeoutError:
            await client.close()
            raise RendezvousTimeoutError(
                f"the rendezvous server at {server} did not complete the handshake in {timeout:g} s"
            ) from None
        except BaseException:
            await client.close()
            raise
        return client

    async def _handshake(self, secret: bytes | None) -> None:
        # Pipelined: preamble and AUTH in one write, one round trip in all.
        self._writer.write(PREAMBLE + (encode(make_auth(secret)) if secret else b""))
        try:
            preamble = await self._reader.readexactly(PREAMBLE_SIZE)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            received = exc.partial.hex() if isinstance(exc, asyncio.IncompleteReadError) else ""
            raise RendezvousProtocolError(
                f"{self._server} closed the connection during the preamble "
                f"(received {received or 'nothing'}); is it a cosmicai rendezvous server?"
            ) from None
        version = parse_preamble(preamble)
        if version != PROTOCOL_VERSION:
            message = await self._read()
            if isinstance(message, Error):
                raise_error(message)
            raise RendezvousProtocolError(
                f"{self._server} speaks protocol version {version}, not {PROTOCOL_VERSION}"
            )
        if secret is not None:
            self._expect(await self._read(), AuthOk)

    # -- frames ---------------------------------------------------------------------------

    async def _read(self) -> Message:
        try:
            if self._header is None:
                self._header = await self._reader.readexactly(HEADER_SIZE)
            length, message_type = HEADER.unpack(self._header)
            if not 0 < length <= self._max_frame:
                raise RendezvousProtocolError(
                    f"{self._server} sent a frame of {length} bytes (limit {self._max_frame})"
                )
            payload = await self._reader.readexactly(length - 1)
        except asyncio.IncompleteReadError:
            raise RendezvousError(
                f"the rendezvous server at {self._server} closed the connection"
            ) from None
        except ConnectionError as exc:
            raise RendezvousError(f"lost the rendezvous server at {self._server}: {exc}") from exc
        self._header = None
        return decode(message_type, payload)

    def _expect(self, message: Message, kind: type[Message]) -> None:
        if isinstance(message, Error):
            raise_error(message)
        if not isinstance(message, kind):
            raise RendezvousProtocolError(
                f"expected {kind.__name__.upper()} from {self._server}, got "
                f"{type(message).__name__.upper()}"
            )

    def _send(self, message: Message) -> None:
        if self._writer.is_closing():
            raise RendezvousError(f"the connection to {self._server} is closed")
        self._writer.write(encode(message))

    # -- pairing --------------------------------------------------------------------------

    async def request_pair(
        self, name: str, *, private: Endpoint | None = None, wait: float = 60.0
    ) -> Endpoint:
        """Ask to be paired under ``name``; returns this client's public endpoint once the
        server has accepted. Then ``wait_peer`` (or ``leave``)."""
        request = Pair(name, _ms(wait), private or self.local_endpoint)
        return await self._submit("pair", request, wait)

    async def wait_peer(self) -> PairResult:
        request = self._request
        if self._pending != "pair" or not isinstance(request, Pair):
            raise RendezvousError("wait_peer() without a pending request_pair()")
        message = await self._finish(Peer)
        assert isinstance(message, Peer) and self.public_endpoint is not None
        return PairResult(request.name, self.public_endpoint, message.public, message.private)

    async def pair(
        self, name: str, *, private: Endpoint | None = None, wait: float = 60.0
    ) -> PairResult:
        """Wait up to ``wait`` seconds for a partner under ``name``."""
        await self.request_pair(name, private=private, wait=wait)
        return await self.wait_peer()

    # -- worlds ---------------------------------------------------------------------------

    async def request_world(
        self,
        job_id: str,
        world_size: int,
        rank: int,
        *,
        private: Endpoint | None = None,
        deadline: float = 300.0,
    ) -> Endpoint:
        """Register ``rank`` of ``job_id``; returns this client's public endpoint once the
        server has accepted. ``deadline`` counts from the world's first registration, and the
        first registration's deadline is the world's. Then ``wait_world`` (or ``leave``)."""
        request = Register(job_id, world_size, rank, _ms(deadline), private or self.local_endpoint)
        return await self._submit("world", request, deadline)

    async def wait_world(self) -> WorldResult:
        request = self._request
        if self._pending != "world" or not isinstance(request, Register):
            raise RendezvousError("wait_world() without a pending request_world()")
        message = await self._finish(World)
        assert isinstance(message, World) and self.public_endpoint is not None
        records = message.records
        if [record.rank for record in records] != list(range(request.world_size)):
            raise RendezvousProtocolError(
                f"the world of {request.job_id!r} from {self._server} does not hold ranks "
                f"0..{request.world_size - 1} in order"
            )
        return WorldResult(request.job_id, request.rank, self.public_endpoint, records)

    async def register(
        self,
        job_id: str,
        world_size: int,
        rank: int,
        *,
        private: Endpoint | None = None,
        deadline: float = 300.0,
    ) -> WorldResult:
        """Register and wait for the whole world (every rank's endpoints)."""
        await self.request_world(job_id, world_size, rank, private=private, deadline=deadline)
        return await self.wait_world()

    # -- common ---------------------------------------------------------------------------

    async def _submit(self, kind: str, request: Pair | Register, wait: float) -> Endpoint:
        if self._pending is not None:
            raise RendezvousError(f"a {self._pending} request is still pending; leave() first")
        self._send(request)
        self._pending, self._request = kind, request
        self._deadline = asyncio.get_running_loop().time() + wait + DEADLINE_MARGIN
        message = await self._read_by_deadline()
        if not isinstance(message, Accepted):
            self._pending = self._request = None
            self._expect(message, Accepted)
        assert isinstance(message, Accepted)
        # The server may cap the wait; its figure is the one that counts.
        self._deadline = (
            asyncio.get_running_loop().time() + message.wait_ms / 1000 + DEADLINE_MARGIN
        )
        self.public_endpoint = message.public
        return message.public

    async def _finish(self, kind: type[Message]) -> Message:
        """The pending request's answer, which must be ``kind``; the request is then done."""
        message = await self._wait_result()
        self._expect(message, kind)
        self._pending = self._request = None
        return message

    async def _read_by_deadline(self) -> Message:
        left = self._deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(max(left, 0.0)):
                return await self._read()
        except TimeoutError:
            raise RendezvousTimeoutError(
                f"the rendezvous server at {self._server} did not answer by the deadline"
            ) from None

    async def _wait_result(self) -> Message:
        message = await self._read_by_deadline()
        if isinstance(message, Error):
            self._pending = self._request = None
        return message

    async def leave(self) -> None:
        """Withdraw the pending request (if any); the connection stays usable.

        A partner or world that was sent just before the server saw the LEAVE is discarded.
        """
        self._send(Leave())
        while True:
            message = await self._read()
            if isinstance(message, Error):
                self._pending = self._request = None
                raise_error(message)
            if isinstance(message, Left):
                self._pending = self._request = None
                return

    async def close(self) -> None:
        """Close the connection; the server drops whatever was pending."""
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()

    async def __aenter__(self) -> RendezvousClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


def _ms(seconds: float) -> int:
    if not 0 < seconds <= 0xFFFFFFFF / 1000:
        raise ValueError(f"a wait or deadline must be positive and finite, not {seconds}")
    return max(1, int(seconds * 1000))


class BlockingRendezvousClient:
    """The same client for code without an event loop (one private loop per client)."""

    def __init__(
        self,
        host: str,
        port: int = DEFAULT_RENDEZVOUS_PORT,
        *,
        secret: bytes | str | None = None,
        local_address: tuple[str, int] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self._runner = asyncio.Runner()
        try:
            self._client = self._runner.run(
                RendezvousClient.connect(
                    host, port, secret=secret, local_address=local_address, timeout=timeout
                )
            )
        except BaseException:
            self._runner.close()
            raise

    @property
    def local_endpoint(self) -> Endpoint:
        return self._client.local_endpoint

    @property
    def public_endpoint(self) -> Endpoint | None:
        return self._client.public_endpoint

    def pair(
        self,
        name: str,
        *,
        private: Endpoint | None = None,
        wait: float = 60.0,
        timeout: float | None = None,
    ) -> PairResult:
        """``RendezvousClient.pair``; ``timeout`` bounds the whole call on this side (default:
        the server's wait plus ``DEADLINE_MARGIN``)."""
        return self._run(self._client.pair(name, private=private, wait=wait), timeout)

    def register(
        self,
        job_id: str,
        world_size: int,
        rank: int,
        *,
        private: Endpoint | None = None,
        deadline: float = 300.0,
        timeout: float | None = None,
    ) -> WorldResult:
        """``RendezvousClient.register``; ``timeout`` as for ``pair``."""
        return self._run(
            self._client.register(job_id, world_size, rank, private=private, deadline=deadline),
            timeout,
        )

    def _run(self, call: Coroutine[Any, Any, T], timeout: float | None) -> T:
        if timeout is None:
            return self._runner.run(call)

        async def bounded() -> T:
            async with asyncio.timeout(timeout):
                return await call

        try:
            return self._runner.run(bounded())
        except TimeoutError:
            raise RendezvousTimeoutError(
                f"no answer from the rendezvous server at {self._client.server} within "
                f"{timeout:g} s"
            ) from None

    def leave(self) -> None:
        self._runner.run(self._client.leave())

    def close(self) -> None:
        try:
            self._runner.run(self._client.close())
        finally:
            self._runner.close()

    def __enter__(self) -> BlockingRendezvousClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
