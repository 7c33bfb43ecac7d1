"""The one program the NAT tests and the hole-punching benchmark run inside namespaces.

Run as ``python -m harness.netns.agents <command> ...`` (``NatTopology.run``/``spawn`` set
PYTHONPATH). Every command prints one JSON object per line on stdout; every loop is bounded by
a deadline.

Plain-socket commands (they check the topology itself, with no cosmicai code): ``serve``,
``observe``, ``expose``, ``probe``, ``punch``. The cosmicai commands: ``rendezvous`` (the real
rendezvous server), ``rank`` (one communicator rank over hole-punched links, for
tests/netns/test_comm_nat.py) and ``link-rounds`` (one rank of the punch benchmark: many fresh
two-rank worlds in a row).

The ``serve`` command is a toy rendezvous server with a line protocol:

* ``echo\\n``: answers ``<ip> <port>\\n`` (the source it observed) and closes;
* ``hold\\n``: the same answer, then keeps the connection open until the client closes it
  (so the NAT mapping stays in use);
* ``pair <name>\\n``: answers ``you <ip> <port>\\n``; when a second client sends the same name,
  each gets ``peer <ip> <port>\\n`` (the other's observed source) and both are closed — the
  TCPunch exchange, in text.

``punch`` is the reference hole punch: register from a port, then simultaneous open from that
port toward the peer's observed endpoint, raced against accept on the same port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import select
import selectors
import socket
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

#: The plain-socket agents' (host, port); the communicator's agents convert it to the
#: rendezvous wire's Endpoint.
Endpoint = tuple[str, int]

#: The deployment secret of the real rendezvous server the cosmicai commands start and use.
SECRET = b"netns-harness-deployment-secret"
#: The bucket of the object-store fallback (a local directory given with ``rank --store``).
BUCKET = "comm"

#: How long the server waits for a client's first line before dropping it.
_HELLO_TIMEOUT = 5.0


def _endpoint(text: str) -> Endpoint:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def _reusable_socket(local_port: int) -> socket.socket:
    """A TCP socket bound to ``local_port`` that may share it with our other sockets.

    SO_REUSEADDR lets us rebind a port whose earlier connection is closing; SO_REUSEPORT lets a
    listener and several connecting sockets hold the same port at once, which hole punching
    needs (the port the rendezvous server saw is the only one the NAT maps predictably).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("0.0.0.0", local_port))
    return sock


def _read_line(sock: socket.socket, deadline: float) -> str:
    """One line from ``sock`` by ``deadline`` (monotonic); raises TimeoutError or EOFError."""
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no complete line before the deadline")
        sock.settimeout(remaining)
        chunk = sock.recv(1)
        if not chunk:
            raise EOFError(f"connection closed after {data!r}")
        data += chunk
    return data.decode().rstrip("\n")


# -- server -------------------------------------------------------------------------------


class _Server:
    def __init__(self) -> None:
        self.waiting: dict[str, tuple[asyncio.StreamWriter, Endpoint]] = {}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer: Endpoint = writer.get_extra_info("peername")[:2]
        try:
            line = (await asyncio.wait_for(reader.readline(), _HELLO_TIMEOUT)).decode().strip()
            command, _, name = line.partition(" ")
            if command == "echo":
                writer.write(f"{peer[0]} {peer[1]}\n".encode())
                await writer.drain()
            elif command == "hold":
                writer.write(f"{peer[0]} {peer[1]}\n".encode())
                await writer.drain()
                # Until the client closes: its NAT mapping stays alive meanwhile.
                await reader.read()
            elif command == "pair" and name:
                writer.write(f"you {peer[0]} {peer[1]}\n".encode())
                await writer.drain()
                other = self.waiting.pop(name, None)
                if other is None or other[0].is_closing():
                    self.waiting[name] = (writer, peer)
                    await reader.read()  # keep it until paired (we close it) or it leaves
                    current = self.waiting.get(name)
                    if current is not None and current[0] is writer:
                        del self.waiting[name]
                    return
                other_writer, other_peer = other
                other_writer.write(f"peer {peer[0]} {peer[1]}\n".encode())
                writer.write(f"peer {other_peer[0]} {other_peer[1]}\n".encode())
                await asyncio.gather(other_writer.drain(), writer.drain())
                other_writer.close()
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()


async def _serve(address: str, port: int, lifetime: float) -> None:
    server = _Server()
    listener = await asyncio.start_server(server.handle, address, port, reuse_address=True)
    async with listener:
        _emit(ready=True, address=address, port=port)
        # Bounded: the server never outlives the test that started it by much.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(listener.serve_forever(), lifetime)


# -- clients ------------------------------------------------------------------------------


def _observe(servers: Sequence[Endpoint], local_port: int, timeout: float) -> None:
    """Connect to each server from one local port (all held open) and report what each saw."""
    deadline = time.monotonic() + timeout
    sockets = []
    observed = []
    try:
        for server in servers:
            sock = _reusable_socket(local_port)
            sockets.append(sock)
            local_port = sock.getsockname()[1]
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            sock.connect(server)
            sock.sendall(b"hold\n")
            host, port = _read_line(sock, deadline).split()
            observed.append([host, int(port)])
    finally:
        for sock in sockets:
            sock.close()
    _emit(local_port=local_port, observed=observed)


def _expose(server: Endpoint, seconds: float) -> None:
    """Hold a mapping to ``server`` and listen on the same local port for ``seconds``.

    Prints the observed public endpoint first (so the test can aim probes at it), then what the
    listener accepted.
    """
    deadline = time.monotonic() + seconds
    holder = _reusable_socket(0)
    local_port = holder.getsockname()[1]
    listener = _reusable_socket(local_port)
    listener.listen(8)
    accepted: list[list[object]] = []
    try:
        holder.settimeout(5)
        holder.connect(server)
        holder.sendall(b"hold\n")
        host, port = _read_line(holder, time.monotonic() + 5).split()
        _emit(local_port=local_port, observed=[host, int(port)])
        while (remaining := deadline - time.monotonic()) > 0:
            listener.settimeout(remaining)
            try:
                conn, addr = listener.accept()
            except TimeoutError:
                break
            accepted.append([addr[0], addr[1]])
            conn.close()
    finally:
        listener.close()
        holder.close()
    _emit(accepted=accepted)


def _probe(target: Endpoint, timeout: float) -> None:
    start = time.monotonic()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(target)
        result = "connected"
    except TimeoutError:
        result = "timeout"
    except ConnectionRefusedError:
        result = "refused"
    except OSError as exc:
        result = errno.errorcode.get(exc.errno or 0, str(exc))
    finally:
        sock.close()
    _emit(result=result, elapsed=round(time.monotonic() - start, 3))


def _punch(
    server: Endpoint,
    name: str,
    deadline_s: float,
    attempt_timeout: float,
    message: str,
    start_delay: float = 0.0,
) -> int:
    start = time.monotonic()
    deadline = start + deadline_s
    # 1. Register from a port of our own choosing; that port is what the NAT mapped.
    rendezvous = _reusable_socket(0)
    local_port = rendezvous.getsockname()[1]
    try:
        rendezvous.settimeout(deadline_s)
        rendezvous.connect(server)
        rendezvous.sendall(f"pair {name}\n".encode())
        _, you_host, you_port = _read_line(rendezvous, deadline).split()
        _, peer_host, peer_port = _read_line(rendezvous, deadline).split()
    finally:
        rendezvous.close()
    peer: Endpoint = (peer_host, int(peer_port))
    paired = time.monotonic()
    # Lets a test make one side late, as when the peer record reaches the two sides unevenly.
    time.sleep(min(start_delay, max(deadline - paired, 0)))
    punching = time.monotonic()

    # 2. Listen on the same port: if the peer's SYN arrives while we have no connect in
    #    flight, the accept path takes it.
    listener = _reusable_socket(local_port)
    listener.listen(8)
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)

    link: socket.socket | None = None
    via = ""
    attempts = 0
    errors: Counter[str] = Counter()
    strangers = 0
    connector: socket.socket | None = None
    attempt_end = 0.0
    try:
        while link is None and (now := time.monotonic()) < deadline:
            if connector is None:
                # 3. Connect from the same port toward the peer's public endpoint: our SYN opens
                #    our NAT for the peer's SYN; whichever SYN gets through first, the kernel
                #    completes it (simultaneous open) or the peer accepts it.
                connector = _reusable_socket(local_port)
                connector.setblocking(False)
                attempts += 1
                code = connector.connect_ex(peer)
                if code not in (0, errno.EINPROGRESS):
                    errors[errno.errorcode.get(code, str(code))] += 1
                    connector.close()
                    connector = None
                    time.sleep(min(0.05, max(deadline - time.monotonic(), 0)))
                    continue
                selector.register(connector, selectors.EVENT_WRITE)
                attempt_end = now + attempt_timeout
            for key, _ in selector.select(max(min(attempt_end, deadline) - now, 0)):
                if key.fileobj is listener:
                    conn, addr = listener.accept()
                    if (addr[0], addr[1]) == peer and link is None:
                        link, via = conn, "accept"
                    else:
                        strangers += 1  # the real thing authenticates; here, address only
                        conn.close()
                elif connector is not None and link is None:
                    code = connector.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    selector.unregister(connector)
                    if code == 0:
                        link, via, connector = connector, "connect", None
                    else:
                        errors[errno.errorcode.get(code, str(code))] += 1
                        connector.close()
                        connector = None
            if connector is not None and link is None and time.monotonic() >= attempt_end:
                errors["attempt-timeout"] += 1
                selector.unregister(connector)
                connector.close()
                connector = None
    finally:
        selector.close()
        listener.close()
        if connector is not None:
            connector.close()
    linked = time.monotonic()
    result: dict[str, Any] = {
        "name": name,
        "local_port": local_port,
        "public": [you_host, int(you_port)],
        "peer": list(peer),
        "attempts": attempts,
        "errors": dict(errors),
        "strangers": strangers,
        "register_s": round(paired - start, 4),
    }
    if link is None:
        _emit(ok=False, reason="deadline", elapsed_s=round(linked - start, 3), **result)
        return 1
    # 4. Exchange one line each way over the punched link.
    try:
        link.setblocking(True)
        link.sendall(f"{message}\n".encode())
        received = _read_line(link, max(deadline, time.monotonic() + 2))
    except (OSError, EOFError) as exc:
        _emit(ok=False, reason=f"exchange: {exc!r}", via=via, **result)
        return 1
    finally:
        link.close()
    _emit(
        ok=True,
        via=via,
        received=received,
        link_s=round(linked - punching, 4),  # from our first SYN to a usable link
        elapsed_s=round(time.monotonic() - start, 3),
        **result,
    )
    return 0


# -- cosmicai programs ------------------------------------------------------------------------
# cosmicai and numpy are imported inside these: the plain-socket commands above start many
# times per test session and need neither.


def operand(rank: int) -> np.ndarray:
    """Rank ``rank``'s allreduce input. The first component makes the order of the additions
    show: (1e16 + 1) + (-1e16 + 1) is 0.0 in float64, ((1e16 + 1) - 1e16) + 1 is 1.0."""
    import numpy as np

    return np.array(
        [(1e16, 1.0, -1e16, 1.0)[rank % 4], 0.1 * (rank + 1), 1.0 / (rank + 3), 10.0**-rank]
    )


def _rendezvous(address: str, port: int, health_port: int, lifetime: float) -> None:
    from dataclasses import replace

    from cosmicai.rendezvous.server import RendezvousServer
    from cosmicai.rendezvous.server.config import ServerConfig

    async def run() -> None:
        config = replace(
            ServerConfig(), host=address, port=port, health_port=health_port, secret=SECRET
        )
        async with RendezvousServer(config):
            _emit(event="ready", port=port)
            # Bounded: the server never outlives its user by much (who also kills it).
            await asyncio.sleep(lifetime)

    asyncio.run(run())


def _wait_for_exit(timeout: float) -> None:
    """Until the test writes a line on stdin (or closes it), at most ``timeout`` seconds."""
    readable, _, _ = select.select([sys.stdin], [], [], timeout)
    if readable:
        sys.stdin.readline()


def _rank(args: argparse.Namespace) -> int:
    import logging

    import numpy as np

    from cosmicai.comm import Communicator, FallbackLinks, StoreLinks, derive_job_key
    from cosmicai.comm.links import LinkMaker
    from cosmicai.comm.punch import PunchLinks, punch_links
    from cosmicai.exceptions import CommError
    from cosmicai.rendezvous.wire import Endpoint as WireEndpoint
    from cosmicai.storage import LocalStorage

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format=f"rank {args.rank} %(name)s: %(message)s"
    )
    punch = punch_links(
        rank=args.rank,
        size=args.size,
        job_id=args.job,
        key=derive_job_key(SECRET, args.job),
        rendezvous=WireEndpoint(*args.server),
        rendezvous_secret=SECRET,
        deadline_s=20.0,
    )
    assert isinstance(punch, PunchLinks)
    _emit(
        event="registered",
        rank=args.rank,
        port=punch.port,
        public=None if punch.public is None else punch.public.address,
    )
    links: LinkMaker = punch
    fallback = None
    if args.store:
        store = StoreLinks(
            args.rank, LocalStorage(args.store), BUCKET, f"comm/{args.job}/", poll_max_s=0.01
        )
        links = fallback = FallbackLinks(punch, store, link_deadline_s=args.link_deadline)
    comm = Communicator(args.rank, args.size, links, deadline_s=args.deadline)
    try:
        total = np.empty(4)
        comm.Allreduce(operand(args.rank), total)
        if args.all_pairs:
            # Every pair, in ascending pair order on every rank (no waiting cycle).
            for peer in range(args.size):
                if peer != args.rank:
                    comm.send(args.rank, peer, tag=1)
            for peer in range(args.size):
                if peer != args.rank:
                    assert comm.recv(peer, tag=1) == peer
        stats = comm.link_stats()
        _emit(
            event="result",
            rank=args.rank,
            allreduce=total.tolist(),
            kinds=stats.by_kind,
            peers={str(p): kind for p, kind in stats.peers.items()},
            setup={str(p): seconds for p, seconds in stats.setup_seconds.items()},
            routes={str(p): o.route for p, o in punch.outcomes.items()},
            reasons={str(p): why for p, why in (fallback.reasons if fallback else {}).items()},
            refusals=punch.refusals,
        )
        if args.victim:
            _emit(event="ready")
            time.sleep(30)  # killed by the test long before
            return 0
        if args.survivor:
            _emit(event="entering")
            started = time.monotonic()
            try:
                comm.Allreduce(operand(args.rank), total)
            except CommError as exc:
                _emit(
                    event="failed",
                    error=type(exc).__name__,
                    message=str(exc),
                    elapsed=time.monotonic() - started,
                )
                return 0
            _emit(event="finished", elapsed=time.monotonic() - started)
            return 0
        _wait_for_exit(30)
    finally:
        comm.close()
    return 0


def _link_rounds(server: Endpoint, rank: int, rounds: int, job_prefix: str) -> None:
    """Rounds of a fresh two-rank world: register, link at once, one round trip to prove it."""
    from cosmicai.comm import derive_job_key
    from cosmicai.comm.frames import FrameKind
    from cosmicai.comm.punch import PunchLinks, punch_links
    from cosmicai.rendezvous.wire import Endpoint as WireEndpoint

    peer = 1 - rank
    for index in range(rounds):
        job = f"{job_prefix}-{index}"
        maker = punch_links(
            rank=rank,
            size=2,
            job_id=job,
            key=derive_job_key(SECRET, job),
            rendezvous=WireEndpoint(*server),
            rendezvous_secret=SECRET,
            deadline_s=30.0,
        )
        assert isinstance(maker, PunchLinks)
        registered = time.monotonic()
        channel = maker.link(peer, registered + 10.0)
        linked = time.monotonic()
        deadline = linked + 10.0
        if rank == 0:
            channel.send(FrameKind.OBJECT, 1, [b"ping"], deadline)
            assert bytes(channel.recv(2, deadline).payload) == b"pong"
        else:
            assert bytes(channel.recv(1, deadline).payload) == b"ping"
            channel.send(FrameKind.OBJECT, 2, [b"pong"], deadline)
        outcome = maker.outcomes[peer]
        _emit(
            round=index,
            registered=registered,
            linked=linked,
            via=outcome.via,
            route=outcome.route,
            connects=outcome.connects,
        )
        channel.close()
        maker.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.netns.agents")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve")
    serve.add_argument("--address", required=True)
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--lifetime", type=float, default=30.0)
    observe = commands.add_parser("observe")
    observe.add_argument("--server", type=_endpoint, action="append", required=True)
    observe.add_argument("--local-port", type=int, default=0)
    observe.add_argument("--timeout", type=float, default=5.0)
    expose = commands.add_parser("expose")
    expose.add_argument("--server", type=_endpoint, required=True)
    expose.add_argument("--seconds", type=float, default=3.0)
    probe = commands.add_parser("probe")
    probe.add_argument("--to", type=_endpoint, required=True)
    probe.add_argument("--timeout", type=float, default=1.0)
    punch = commands.add_parser("punch")
    punch.add_argument("--server", type=_endpoint, required=True)
    punch.add_argument("--name", required=True)
    punch.add_argument("--deadline", type=float, default=5.0)
    punch.add_argument("--attempt-timeout", type=float, default=0.5)
    punch.add_argument("--message", default="hello")
    punch.add_argument("--start-delay", type=float, default=0.0)
    rendezvous = commands.add_parser("rendezvous")
    rendezvous.add_argument("--address", required=True)
    rendezvous.add_argument("--port", type=int, required=True)
    rendezvous.add_argument("--health-port", type=int, required=True)
    rendezvous.add_argument("--lifetime", type=float, default=60.0)
    rank = commands.add_parser("rank")
    rank.add_argument("--server", type=_endpoint, required=True)
    rank.add_argument("--rank", type=int, required=True)
    rank.add_argument("--size", type=int, required=True)
    rank.add_argument("--job", required=True)
    rank.add_argument("--store", default="")
    rank.add_argument("--link-deadline", type=float, default=1.0)
    rank.add_argument("--deadline", type=float, default=15.0)
    rank.add_argument("--all-pairs", action="store_true")
    rank.add_argument("--victim", action="store_true")
    rank.add_argument("--survivor", action="store_true")
    rounds = commands.add_parser("link-rounds")
    rounds.add_argument("--server", type=_endpoint, required=True)
    rounds.add_argument("--rank", type=int, required=True)
    rounds.add_argument("--rounds", type=int, required=True)
    rounds.add_argument("--job-prefix", required=True)
    args = parser.parse_args(argv)

    if args.command == "serve":
        asyncio.run(_serve(args.address, args.port, args.lifetime))
    elif args.command == "observe":
        _observe(args.server, args.local_port, args.timeout)
    elif args.command == "expose":
        _expose(args.server, args.seconds)
    elif args.command == "probe":
        _probe(args.to, args.timeout)
    elif args.command == "punch":
        return _punch(
            args.server,
            args.name,
            args.deadline,
            args.attempt_timeout,
            args.message,
            args.start_delay,
        )
    elif args.command == "rendezvous":
        _rendezvous(args.address, args.port, args.health_port, args.lifetime)
    elif args.command == "rank":
        return _rank(args)
    elif args.command == "link-rounds":
        _link_rounds(args.server, args.rank, args.rounds, args.job_prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
