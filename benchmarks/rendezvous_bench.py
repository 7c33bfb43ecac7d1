"""Benchmark of the rendezvous server on loopback; writes docs/rendezvous-benchmark.{md,json}.

    .venv/bin/python benchmarks/rendezvous_bench.py            # the targets of issue 3
    .venv/bin/python benchmarks/rendezvous_bench.py --pairs 200 --world 50 --out /tmp/rv.md

Each scenario starts a fresh server as its own process (``python -m cosmicai.rendezvous
serve``), so the peak RSS reported (VmHWM) is the server's alone; the clients run in this
process on asyncio protocols that timestamp bytes as they arrive.

1. TCPunch pairs: N first partners send their names and wait; N second partners then connect
   (so 2N connections are open at once), and send their names at a steady rate. A pair's
   latency runs from the second partner's name leaving the client to the later of the two
   peer records arriving. A failure is a pair where either side did not get the other's
   exact record.
2. The same with silent clients (connect, send nothing) and garbage clients (zero-byte
   preambles that are not ours, oversized names, bytes after a name) mixed in while the
   second partners arrive.
3. A world of W ranks over the native protocol, with authentication: W - 1 ranks register and
   are accepted; the time runs from the last rank's REGISTER to the last WORLD received.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cosmicai.bench.machine import machine
from cosmicai.rendezvous.wire.auth import make_auth
from cosmicai.rendezvous.wire.endpoint import Endpoint
from cosmicai.rendezvous.wire.framing import DEFAULT_MAX_RESPONSE_FRAME, PREAMBLE, FrameDecoder
from cosmicai.rendezvous.wire.messages import MessageType, Register, World, decode, encode
from cosmicai.rendezvous.wire.tcpunch import RECORD_SIZE, encode_record

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
SECRET = "benchmark-secret-0123456789abcdef"
#: Connections opened at once while setting up; more overflows the listen backlog and turns
#: into 1 s SYN retransmits, which measure the kernel's backlog, not the server.
CONNECT_CONCURRENCY = 256
TARGETS = {"failures": 0, "p99_ms": 50.0, "rss_mb": 150.0, "world_s": 2.0}


def raise_open_file_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Server:
    """The server process, its ports and its memory."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "COSMICAI_RENDEZVOUS_SECRET": SECRET}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cosmicai.rendezvous", "serve", "--host", HOST,
             "--port", "0", "--health-port", "0", "--max-connections", "19000",
             "--max-waiting", "19000", "--max-waiting-per-address", "19000",
             "--max-connections-per-address", "19000", "--max-unauthenticated", "19000",
             "--max-unauthenticated-per-address", "19000", "--max-tcpunch-waiting", "19000",
             "--max-tcpunch-waiting-per-address", "19000", *args],
            stderr=subprocess.PIPE, env=env, text=True,
        )  # fmt: skip
        assert self.process.stderr is not None
        for line in self.process.stderr:
            entry = json.loads(line)
            if entry["event"] == "listening":
                self.port: int = entry["port"]
                self.health_port: int = entry["health_port"]
                self.event_loop: str = entry["event_loop"]
                break
        else:
            raise RuntimeError("the server exited before listening")
        self.rss_start_mb = self._status_mb("VmRSS")

    def _status_mb(self, field_name: str) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {field_name} for the server process")

    def peak_rss_mb(self) -> float:
        return self._status_mb("VmHWM")

    def cpu_seconds(self) -> float:
        """User + system CPU time the server has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def health(self) -> dict[str, Any]:
        url = f"http://{HOST}:{self.health_port}/healthz"
        with urllib.request.urlopen(url, timeout=10) as response:
            report: dict[str, Any] = json.load(response)
            return report

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


class PunchClient(asyncio.Protocol):
    """A TCPunch client that timestamps its own and its peer's record."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.sent_at = 0.0
        self.peer_at = 0.0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.own_record: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.local = Endpoint.from_sockaddr(transport.get_extra_info("sockname"))

    def send_name(self, name: bytes) -> None:
        self.sent_at = time.perf_counter()
        self.transport.write(name)

    def data_received(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= RECORD_SIZE and not self.own_record.done():
            self.own_record.set_result(None)
        if len(self.received) >= 2 * RECORD_SIZE and not self.done.done():
            self.peer_at = time.perf_counter()
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        for future in (self.own_record, self.done):
            if not future.done():
                future.set_result(None)

    @property
    def peer_record(self) -> bytes:
        return bytes(self.received[RECORD_SIZE : 2 * RECORD_SIZE])


class BadClient(asyncio.Protocol):
    """Silent or garbage: counts how it ended."""

    def __init__(self) -> None:
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def open_many(count: int, factory: type[asyncio.Protocol], port: int) -> list[Any]:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one() -> Any:
        async with gate:
            _, protocol = await loop.create_connection(factory, HOST, port)
            return protocol

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def send_garbage(clients: list[BadClient], spread: float) -> dict[str, int]:
    rng = random.Random(3)
    kinds = {"bad_magic": 0, "name_too_long": 0, "bytes_after_name": 0}
    for i, client in enumerate(clients):
        kind = list(kinds)[i % 3]
        kinds[kind] += 1
        if kind == "bad_magic":
            client.transport.write(b"\x00" + rng.randbytes(rng.randint(1, 300)))
        elif kind == "name_too_long":
            client.transport.write(bytes(rng.randint(1, 255) for _ in range(rng.randint(101, 400))))
        else:
            client.transport.write(b"garbage-" + str(i).encode())
        await asyncio.sleep(spread / max(1, len(clients)))
    await asyncio.sleep(0.1)
    for client in clients:
        if kinds["bytes_after_name"] and not client.transport.is_closing():
            client.transport.write(rng.randbytes(64))
    return kinds


@dataclass
class PairsResult:
    pairs: int
    silent: int
    garbage: int
    rate_per_s: float
    open_connections_peak: int
    failures: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    stdev_ms: float
    seconds_to_send_names: float
    server_peak_rss_mb: float
    server_start_rss_mb: float
    server_up_after: bool
    server_event_loop: str
    server_cpu_ms_per_pair: float
    bad_clients_closed_by_server: int = 0
    garbage_kinds: dict[str, int] = field(default_factory=dict)
    server_counters: dict[str, Any] = field(default_factory=dict)


async def tcpunch_pairs(
    pairs: int, rate: float, silent: int, garbage: int, *server_args: str
) -> PairsResult:
    server = Server("--hello-timeout", "30", *server_args)
    try:
        port = server.port
        # GIVEN every first partner waiting under its own name
        firsts = await open_many(pairs, PunchClient, port)
        for i, client in enumerate(firsts):
            client.send_name(f"pair-{i:05d}".encode())
        await asyncio.gather(*(c.own_record for c in firsts))
        # AND every second partner connected, silent and garbage clients too
        seconds = await open_many(pairs, PunchClient, port)
        quiet = await open_many(silent, BadClient, port)
        noisy = await open_many(garbage, BadClient, port)
        open_peak = 2 * pairs + silent + garbage
        cpu_before = server.cpu_seconds()
        # WHEN the second partners send their names at a steady rate
        garbage_task = asyncio.create_task(send_garbage(noisy, pairs / rate))
        start = time.perf_counter()
        batch_period = 0.005
        per_batch = max(1, round(rate * batch_period))
        for offset in range(0, pairs, per_batch):
            due = start + (offset / rate)
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            for i in range(offset, min(pairs, offset + per_batch)):
                seconds[i].send_name(f"pair-{i:05d}".encode())
        sending = time.perf_counter() - start
        try:
            async with asyncio.timeout(60):
                await asyncio.gather(*(c.done for c in firsts + seconds))
        except TimeoutError:
            pass
        kinds = await garbage_task
        server_cpu = server.cpu_seconds() - cpu_before
        # THEN count failures and latencies
        latencies: list[float] = []
        failures = 0
        for first, second in zip(firsts, seconds, strict=True):
            first_ok = first.peer_record == encode_record(second.local)
            second_ok = second.peer_record == encode_record(first.local)
            if not (first_ok and second_ok):
                failures += 1
                continue
            latencies.append((max(first.peer_at, second.peer_at) - second.sent_at) * 1000)
        await asyncio.sleep(0.2)
        closed_bad = sum(1 for c in noisy if c.closed.done())
        health = await asyncio.to_thread(server.health)
        peak = server.peak_rss_mb()
        for client in firsts + seconds + quiet + noisy:
            client.transport.close()
        return PairsResult(
            pairs=pairs,
            silent=silent,
            garbage=garbage,
            rate_per_s=rate,
            open_connections_peak=open_peak,
            failures=failures,
            **_stats(latencies),
            seconds_to_send_names=round(sending, 3),
            server_peak_rss_mb=round(peak, 1),
            server_start_rss_mb=round(server.rss_start_mb, 1),
            server_up_after=health["status"] == "ok",
            server_event_loop=server.event_loop,
            server_cpu_ms_per_pair=round(server_cpu * 1000 / pairs, 3),
            bad_clients_closed_by_server=closed_bad,
            garbage_kinds=kinds,
            server_counters=health["counters"],
        )
    finally:
        server.stop()


def _stats(latencies_ms: list[float]) -> dict[str, float]:
    if not latencies_ms:
        return dict.fromkeys(("p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms", "stdev_ms"), 0.0)
    ordered = sorted(latencies_ms)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 2)

    return {
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "max_ms": round(ordered[-1], 2),
        "mean_ms": round(statistics.fmean(ordered), 2),
        "stdev_ms": round(statistics.pstdev(ordered), 2),
    }


class NativeRank(asyncio.Protocol):
    """A rank speaking the native protocol with the package's own encoder and frame decoder,
    timestamping the moment its WORLD frame is complete. Decoding 1,000 worlds of 1,000
    records would cost this one process seconds that, on real workers, each rank spends on
    its own machine; it is measured separately."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.decoder = FrameDecoder(DEFAULT_MAX_RESPONSE_FRAME)
        self.preamble = b""
        self.frames: list[tuple[int, bytes]] = []
        self.authenticated: asyncio.Future[None] = loop.create_future()
        self.accepted: asyncio.Future[None] = loop.create_future()
        self.world: asyncio.Future[bytes] = loop.create_future()
        self.world_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport.write(PREAMBLE + encode(make_auth(SECRET.encode())))

    def register(self, ranks: int, rank: int) -> None:
        # As the client library does: the local socket address is the private endpoint.
        private = Endpoint.from_sockaddr(self.transport.get_extra_info("sockname"))
        self.transport.write(encode(Register("bench", ranks, rank, 120_000, private)))

    def data_received(self, data: bytes) -> None:
        if len(self.preamble) < len(PREAMBLE):
            missing = len(PREAMBLE) - len(self.preamble)
            self.preamble += data[:missing]
            data = data[missing:]
        for message_type, payload in self.decoder.feed(data):
            if message_type == MessageType.WORLD:
                self.world_at = time.perf_counter()
                self.world.set_result(payload)
            elif message_type == MessageType.AUTH_OK:
                self.authenticated.set_result(None)
            elif message_type == MessageType.ACCEPTED:
                self.accepted.set_result(None)
            else:
                error = ValueError(f"unexpected frame {message_type:#x}: {payload!r}")
                for future in (self.authenticated, self.accepted):
                    if not future.done():
                        future.set_exception(error)
                if not self.world.done():
                    self.world.set_exception(error)

    def connection_lost(self, exc: Exception | None) -> None:
        for future in (self.authenticated, self.accepted):
            if not future.done():
                future.set_exception(ConnectionError("closed"))
        if not self.world.done():
            self.world.set_exception(ConnectionError("closed"))


@dataclass
class WorldResult:
    ranks: int
    seconds_to_register_all_but_one: float
    last_registration_to_all_answered_s: float
    frame_bytes_per_rank: int
    all_identical: bool
    decode_ms_per_rank: float
    server_peak_rss_mb: float
    server_start_rss_mb: float


async def world(ranks: int) -> WorldResult:
    server = Server()
    try:
        started = time.perf_counter()
        clients: list[NativeRank] = await open_many(ranks, NativeRank, server.port)
        await asyncio.gather(*(c.authenticated for c in clients))
        # GIVEN every rank but the last registered and accepted
        for rank, client in enumerate(clients[:-1]):
            client.register(ranks, rank)
        await asyncio.gather(*(c.accepted for c in clients[:-1]))
        registered = time.perf_counter() - started
        await asyncio.sleep(0.2)
        # WHEN the last rank registers
        t0 = time.perf_counter()
        clients[-1].register(ranks, ranks - 1)
        frames = await asyncio.gather(*(c.world for c in clients))
        # THEN every rank received the same world: time to the last one
        elapsed = max(c.world_at for c in clients) - t0
        identical = len(set(frames)) == 1
        decode_start = time.perf_counter()
        decoded = decode(MessageType.WORLD, frames[0])
        decode_ms = (time.perf_counter() - decode_start) * 1000
        assert isinstance(decoded, World) and len(decoded.records) == ranks
        peak = server.peak_rss_mb()
        for client in clients:
            client.transport.close()
        return WorldResult(
            ranks=ranks,
            seconds_to_register_all_but_one=round(registered, 3),
            last_registration_to_all_answered_s=round(elapsed, 4),
            frame_bytes_per_rank=len(frames[0]) + 5,
            all_identical=identical,
            decode_ms_per_rank=round(decode_ms, 2),
            server_peak_rss_mb=round(peak, 1),
            server_start_rss_mb=round(server.rss_start_mb, 1),
        )
    finally:
        server.stop()


def _rate(rate: float) -> str:
    return "all at once" if rate >= 1e8 else f"{rate:,.0f}/s"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def limits_paragraph(plain: dict[str, Any], sweep: list[dict[str, Any]]) -> list[str]:
    uv = [r for r in [plain, *sweep] if r["server_event_loop"] == "uvloop"]
    standard = [r for r in sweep if r["server_event_loop"] == "asyncio"]
    cpu = statistics.median(r["server_cpu_ms_per_pair"] for r in uv) if uv else 0.0
    if cpu <= 0:  # too few pairs for the 10 ms resolution of process CPU time
        return []
    within = [r["rate_per_s"] for r in uv if r["p99_ms"] <= TARGETS["p99_ms"]]
    burst = [r for r in uv if r["rate_per_s"] >= 1e8]
    text = (
        "What limits it: the server is one Python process, so one core. It spends about "
        f"{cpu} ms of CPU per pair on uvloop (two connections: accept, read, timers, three "
        "writes, two closes)"
    )
    if standard:
        text += f" and {standard[0]['server_cpu_ms_per_pair']} ms on the standard asyncio loop"
        text += (
            f" (which serves when uvloop is not installed: at {_rate(standard[0]['rate_per_s'])}"
            f" its p99 was {standard[0]['p99_ms']} ms, target "
            f"{verdict(standard[0]['p99_ms'] <= TARGETS['p99_ms'])})"
        )
    text += (
        f", so one core saturates near {1000 / cpu:,.0f} pairs/s; less here, where the "
        "clients (standing for 10,000 machines) share the 2 vCPUs. Below saturation a pairing "
        "takes the 10 ms name settle plus a few ms; above it, arrivals queue."
    )
    if within:
        text += f" The p99 ≤ 50 ms target held up to {_rate(max(within))} in this run" + (
            f"; when all {burst[0]['pairs']:,} second partners arrive at once every pair "
            f"still succeeds, the last within {burst[0]['max_ms']:,.0f} ms, but p99 is "
            f"{burst[0]['p99_ms']:,.0f} ms: the target is not met for an instantaneous "
            "burst of that size."
            if burst
            else "."
        )
    return [text]


def write_report(results: dict[str, Any], out: Path) -> None:
    m = results["machine"]
    plain, mixed, w = results["pairs"], results["pairs_mixed"], results["world"]
    lines = [
        "# Rendezvous server benchmark",
        "",
        f"Run {results['date']} with `{results['command']}`; raw figures in "
        f"`{out.with_suffix('.json').name}`.",
        "",
        f"Machine: {m['cpus']} vCPU ({m['cpu_model']}), shared with other work; "
        f"{m['implementation']} {m['python']}, Linux {m['kernel']}; load average "
        f"{m['load_average_at_start'][0]} at the start. Server and clients share "
        "the same 2 vCPUs, on loopback; the server is its own process (its RSS is its own), "
        "started with `--hello-timeout 30` (the second partners connect well before they "
        "send their names) and per-address and unauthenticated limits raised (every client is "
        "127.0.0.1). "
        f"Server event loop: {plain['server_event_loop']} (as in the container); clients: "
        f"{results['client_event_loop']}.",
        "",
        "| scenario | target | result | |",
        "|---|---|---|---|",
    ]
    for name, r in (("TCPunch pairs", plain), ("TCPunch pairs + bad clients", mixed)):
        lines += [
            f"| {name}: {r['pairs']:,} pairs, {r['open_connections_peak']:,} connections open "
            f"at once, {len(r['failures_every_run'])} runs | 0 failures | "
            f"{sum(r['failures_every_run'])} failures | "
            f"{verdict(sum(r['failures_every_run']) == 0)} |",
            f"| {name}: pairing latency after the 2nd partner's name (median run) | "
            f"p99 ≤ 50 ms | p50 {r['p50_ms']} ms, p90 {r['p90_ms']} ms, p99 {r['p99_ms']} ms, "
            f"max {r['max_ms']} ms; p99 of every run: "
            f"{', '.join(str(p) for p in r['p99_ms_every_run'])} ms | "
            f"{verdict(r['p99_ms'] <= TARGETS['p99_ms'])} |",
            f"| {name}: server peak RSS | ≤ 150 MB | {r['server_peak_rss_mb']} MB "
            f"(at start {r['server_start_rss_mb']} MB) | "
            f"{verdict(r['server_peak_rss_mb'] <= TARGETS['rss_mb'])} |",
        ]
    lines += [
        f"| bad clients mixed in: {mixed['silent']} silent + {mixed['garbage']} garbage | "
        f"server stays up | /healthz {'ok' if mixed['server_up_after'] else 'DOWN'} | "
        f"{verdict(mixed['server_up_after'])} |",
        f"| world of {w['ranks']:,} ranks (native, authenticated): last REGISTER → every "
        f"rank has the world | ≤ 2 s | {w['last_registration_to_all_answered_s']} s | "
        f"{verdict(w['last_registration_to_all_answered_s'] <= TARGETS['world_s'])} |",
        f"| world: server peak RSS | — | {w['server_peak_rss_mb']} MB | |",
        "",
        "Latency against the rate at which second partners arrive (no bad clients):",
        "",
        "| arrival rate | server loop | failures | p50 | p90 | p99 | max | server CPU per pair |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {_rate(r['rate_per_s'])} | {r['server_event_loop']} | {r['failures']} | "
            f"{r['p50_ms']} ms | {r['p90_ms']} ms | {r['p99_ms']} ms | {r['max_ms']} ms | "
            f"{r['server_cpu_ms_per_pair']} ms |"
            for r in sorted(
                [plain, *results["sweep"]],
                key=lambda r: (r["server_event_loop"] != "uvloop", r["rate_per_s"]),
            )
        ),
        "",
        *limits_paragraph(plain, results["sweep"]),
        "",
        "Details:",
        "",
        f"- Second partners sent their names at {plain['rate_per_s']:,.0f}/s "
        f"({plain['seconds_to_send_names']} s for all); latency mean "
        f"{plain['mean_ms']} ± {plain['stdev_ms']} ms. The server waits "
        "`tcpunch_name_settle` (10 ms) after a name's last byte before treating it as "
        "complete (TCPunch names have no terminator), so about 10 ms of every latency is "
        "that wait.",
        f"- Mixed run: garbage clients were {mixed['garbage_kinds']}; "
        f"{mixed['bad_clients_closed_by_server']} of {mixed['garbage']} were closed by the "
        "server during the run (the names followed by more bytes are dropped as soon as the "
        "extra bytes arrive; silent clients are closed at the hello timeout, after the run).",
        f"- World: {w['ranks'] - 1:,} ranks connected, authenticated and registered in "
        f"{w['seconds_to_register_all_but_one']} s; each received one WORLD frame of "
        f"{w['frame_bytes_per_rank']:,} bytes; all identical: {w['all_identical']}. The time "
        "stops when a rank's WORLD frame has fully arrived; decoding it takes a rank a further "
        f"{w['decode_ms_per_rank']} ms (measured once here: the benchmark's one process would "
        "otherwise decode all the ranks' worlds in turn, which real workers do in parallel).",
        "",
        "Reproduce: `.venv/bin/python benchmarks/rendezvous_bench.py` (about a minute). "
        "The test suite runs it at a tiny size so that it keeps working; it asserts no figure.",
        "",
    ]
    out.write_text("\n".join(lines))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/rendezvous_bench.py " + " ".join(sys.argv[1:]),
        "machine": machine(
            note="2 vCPU shared with other work; server and clients on the same 2 vCPUs"
        ),
        "client_event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
    }
    # The machine is shared: each headline scenario runs `repeat` times and the run with the
    # median p99 is reported, every run's p99 beside it.
    for key, silent, garbage in (
        ("pairs", 0, 0),
        ("pairs_mixed", args.silent, args.garbage),
    ):
        runs = [
            asdict(await tcpunch_pairs(args.pairs, args.rate, silent, garbage))
            for _ in range(args.repeat)
        ]
        ranked = sorted(runs, key=lambda r: r["p99_ms"])
        results[key] = {**ranked[len(ranked) // 2], "p99_ms_every_run": [r["p99_ms"] for r in runs]}
        results[key]["failures_every_run"] = [r["failures"] for r in runs]
    results["world"] = asdict(await world(args.world))
    # How latency grows with the arrival rate, and on the standard asyncio loop.
    sweep = []
    for rate in args.sweep:
        sweep.append(asdict(await tcpunch_pairs(args.pairs, rate, 0, 0)))
    sweep.append(
        asdict(await tcpunch_pairs(args.pairs, args.rate, 0, 0, "--event-loop", "asyncio"))
    )
    results["sweep"] = sweep
    return results


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The clients stand for thousands of machines: the cheaper they are on this shared CPU,
    the less they slow the server down."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=2500.0, help="second partners per second")
    parser.add_argument("--silent", type=int, default=100)
    parser.add_argument("--garbage", type=int, default=100)
    parser.add_argument("--world", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each pairs scenario")
    parser.add_argument(
        "--sweep",
        type=float,
        nargs="*",
        default=[1000.0, 5000.0, 10000.0, 1e9],
        help="further arrival rates to measure (1e9: all at once)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "rendezvous-benchmark.md")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the report from the JSON beside it"
    )
    args = parser.parse_args(argv)
    if args.report_only:
        write_report(json.loads(args.out.with_suffix(".json").read_text()), args.out)
        return
    limit = raise_open_file_limit()
    needed = 2 * args.pairs + args.silent + args.garbage + 100
    if limit < needed:
        sys.exit(f"needs {needed} open files, the limit is {limit} (raise `ulimit -Hn`)")
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        results = runner.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, args.out)
    print(args.out.read_text())


if __name__ == "__main__":
    main()
