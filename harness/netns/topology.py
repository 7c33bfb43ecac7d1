"""Real NATs in Linux network namespaces, for testing TCP hole punching.

Layout (addresses for router *i*, 1-based, and LAN host *j* behind it, 0-based)::

    public host "server" 198.51.100.10 ─┐
    public host "stranger" 198.51.100.11┤  namespace "internet": bridge br0, 198.51.100.1/24
    nat<i> wan 198.51.100.(100+i) ──────┘
    nat<i> br0 10.77.<i>.1/24 ── LAN host 10.77.<i>.(10+j), default route via 10.77.<i>.1

Every namespace is created by us and wired only to other namespaces of ours: nothing is
connected to the host's own namespace, and only LAN hosts have a default route (to their NAT,
which has none), so traffic to any address outside the topology fails as "unreachable" instead
of leaving the machine.

NAT kinds (nftables ``masquerade`` on the router's wan port):

* ``cone``: plain masquerade. Linux keeps the source port whenever the translated tuple is
  unique, so one local port maps to the same public port for every destination
  (endpoint-independent mapping). Filtering is still address-and-port dependent: conntrack only
  lets in packets of a tuple the inside opened (a "port-restricted cone").
* ``symmetric``: ``masquerade random``: every new connection gets a fresh random public port,
  so the port the rendezvous server observed is useless to a peer.

Both kinds drop anything new arriving from the public side, silently (no RST), as most NATs do.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from harness.system import ensure_program

NatKind = Literal["cone", "symmetric"]

#: Every namespace we create is named ``cai<pid>-...``; the pid lets a later run tell the
#: leftovers of a crashed run (pid gone) from those of a run still going (pid alive).
BASE_PREFIX = "cai"
_OURS = re.compile(rf"^{BASE_PREFIX}(\d+)-")

REPO_ROOT = Path(__file__).resolve().parents[2]

PUBLIC_NETWORK = ipaddress.IPv4Network("198.51.100.0/24")
INTERNET_ADDRESS = "198.51.100.1"
#: Public hosts get .10, .11, ... in the order given; routers get .101, .102, ...
FIRST_PUBLIC_HOST = 10
FIRST_ROUTER = 100
FIRST_LAN_HOST = 10

#: Generous for one `ip` call; a hung one must not hang the suite.
_COMMAND_TIMEOUT = 20.0


class TopologyError(RuntimeError):
    """A command that builds or inspects the topology failed."""


@dataclass(frozen=True)
class NatSpec:
    """One NAT router and the names of the hosts on its LAN."""

    name: str
    kind: NatKind
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class Host:
    """A namespace that runs code: a LAN host behind ``router``, or a public host (router None)."""

    name: str
    netns: str
    address: str
    router: str | None


@dataclass(frozen=True)
class Router:
    name: str
    netns: str
    kind: NatKind
    public_address: str
    lan_address: str
    lan: ipaddress.IPv4Network


@dataclass
class _Plan:
    hosts: dict[str, Host] = field(default_factory=dict)
    routers: dict[str, Router] = field(default_factory=dict)


class TopologyFactory(Protocol):
    """What the ``nat_topology_factory`` fixture returns: builds one, closed at session end."""

    def __call__(
        self, nats: Sequence[NatSpec], *, public_hosts: Sequence[str] = ("server", "stranger")
    ) -> NatTopology: ...


def two_nats(kind: NatKind, *, second: NatKind | None = None) -> list[NatSpec]:
    """The usual layout: h1 and h3 behind nat1 (same LAN), h2 behind nat2."""
    return [
        NatSpec("nat1", kind, ("h1", "h3")),
        NatSpec("nat2", second or kind, ("h2",)),
    ]


def _sh(argv: Sequence[str], *, timeout: float = _COMMAND_TIMEOUT, stdin: str | None = None) -> str:
    try:
        done = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TopologyError(f"{' '.join(argv)}: {exc}") from exc
    if done.returncode != 0:
        raise TopologyError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def list_netns() -> list[str]:
    # Lines look like "name (id: 3)" or just "name".
    return [line.split()[0] for line in _sh(["ip", "netns", "list"]).splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers() -> list[str]:
    """Delete namespaces of earlier runs that died without cleaning up (their pid is gone)."""
    removed = []
    for name in list_netns():
        match = _OURS.match(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        with contextlib.suppress(TopologyError):
            _sh(["ip", "netns", "delete", name])
            removed.append(name)
    return removed


def ensure_nftables() -> str | None:
    """Install nftables when missing; return why it is unusable, or None when it is fine."""
    return ensure_program(("nft",), "nftables")[1]


def check_environment() -> str | None:
    """Why namespace NAT tests cannot run here, or None when they can.

    Installs nftables if needed and sweeps leftovers of crashed runs, so call it once per test
    session before building topologies.
    """
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespace NAT tests need root (ip netns, nftables)"
    if shutil.which("ip") is None:
        return "iproute2 (the `ip` command) is not installed"
    reason = ensure_nftables()
    if reason is not None:
        return reason
    try:
        remove_leftovers()
    except TopologyError as exc:
        return f"`ip netns list` failed: {exc}"
    probe = f"{BASE_PREFIX}{os.getpid()}-probe"
    try:
        _sh(["ip", "netns", "add", probe])
    except TopologyError as exc:
        # `ip netns add` can fail after creating the name file; do not leave it behind.
        with contextlib.suppress(TopologyError):
            _sh(["ip", "netns", "delete", probe])
        return f"cannot create a network namespace (no CAP_NET_ADMIN?): {exc}"
    try:
        _sh(["ip", "netns", "exec", probe, "nft", "add", "table", "ip", "probe"])
    except TopologyError as exc:
        return f"nftables does not work inside a network namespace: {exc}"
    finally:
        with contextlib.suppress(TopologyError):
            _sh(["ip", "netns", "delete", probe])
    return None


_counter = itertools.count(1)


class NatTopology:
    """Builds the namespaces on ``build()`` (or ``with``), removes them all on ``close()``."""

    def __init__(
        self,
        nats: Sequence[NatSpec],
        *,
        public_hosts: Sequence[str] = ("server", "stranger"),
        prefix: str | None = None,
    ) -> None:
        # Namespace names are files, so anything goes, but keep them short for `ip netns list`.
        self.prefix = prefix or f"{BASE_PREFIX}{os.getpid()}-{next(_counter)}-"
        self.internet = f"{self.prefix}internet"
        self._plan = self._make_plan(nats, public_hosts)
        self._created: list[str] = []
        self._processes: list[subprocess.Popen[str]] = []
        self._lock = threading.Lock()
        # Tests share a session-scoped topology; distinct server ports keep them apart.
        self._ports = itertools.count(20000)

    def _make_plan(self, nats: Sequence[NatSpec], public_hosts: Sequence[str]) -> _Plan:
        plan = _Plan()
        names: set[str] = {"internet"}

        def claim(name: str) -> str:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,14}", name) or name in names:
                raise ValueError(f"bad or duplicate node name {name!r}")
            names.add(name)
            return f"{self.prefix}{name}"

        for index, public in enumerate(public_hosts):
            address = str(PUBLIC_NETWORK[FIRST_PUBLIC_HOST + index])
            plan.hosts[public] = Host(public, claim(public), address, None)
        if len(nats) > 150 or len(public_hosts) > FIRST_ROUTER - FIRST_PUBLIC_HOST:
            raise ValueError("too many nodes for the address plan")
        for i, spec in enumerate(nats, start=1):
            lan = ipaddress.IPv4Network(f"10.77.{i}.0/24")
            plan.routers[spec.name] = Router(
                spec.name,
                claim(spec.name),
                spec.kind,
                str(PUBLIC_NETWORK[FIRST_ROUTER + i]),
                str(lan[1]),
                lan,
            )
            for j, host in enumerate(spec.hosts):
                plan.hosts[host] = Host(host, claim(host), str(lan[FIRST_LAN_HOST + j]), spec.name)
        return plan

    # -- what tests look at ---------------------------------------------------------------

    @property
    def hosts(self) -> Mapping[str, Host]:
        return dict(self._plan.hosts)

    @property
    def routers(self) -> Mapping[str, Router]:
        return dict(self._plan.routers)

    @property
    def addresses(self) -> dict[str, str]:
        """Each host's own address (private on a LAN) and each NAT's public address."""
        found = {name: host.address for name, host in self._plan.hosts.items()}
        found.update({name: r.public_address for name, r in self._plan.routers.items()})
        return found

    def public_address(self, host: str) -> str:
        """The address the public side sees for ``host``: its NAT's, or its own."""
        node = self._plan.hosts[host]
        if node.router is None:
            return node.address
        return self._plan.routers[node.router].public_address

    def netns(self, name: str) -> str:
        if name == "internet":
            return self.internet
        if name in self._plan.hosts:
            return self._plan.hosts[name].netns
        return self._plan.routers[name].netns

    # -- running code ---------------------------------------------------------------------

    @staticmethod
    def python_env() -> dict[str, str]:
        # The repo root makes `harness.netns.agents` importable; src makes `cosmicai` importable
        # even when the package is not installed into the interpreter.
        paths = [str(REPO_ROOT / "src"), str(REPO_ROOT)]
        if os.environ.get("PYTHONPATH"):
            paths.append(os.environ["PYTHONPATH"])
        return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}

    def _python_argv(self, host: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns(host), sys.executable, *argv]

    def run(
        self, host: str, argv: Sequence[str], timeout: float, *, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``python *argv`` inside ``host`` (never raises on a non-zero exit)."""
        return subprocess.run(
            self._python_argv(host, argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.python_env(),
            cwd=REPO_ROOT,
            check=False,
        )

    def spawn(self, host: str, argv: Sequence[str]) -> subprocess.Popen[str]:
        """Start ``python *argv`` inside ``host``; it is killed by ``close()`` if still running.

        stdin/stdout/stderr are text pipes: read with ``read_line`` or ``communicate``.
        """
        process = subprocess.Popen(
            self._python_argv(host, argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.python_env(),
            cwd=REPO_ROOT,
        )
        with self._lock:
            self._processes.append(process)
        return process

    def command(self, name: str, argv: Sequence[str], timeout: float = _COMMAND_TIMEOUT) -> str:
        """Run any command inside a host, router or "internet"; raise TopologyError on failure."""
        return _sh(["ip", "netns", "exec", self.netns(name), *argv], timeout=timeout)

    def allocate_port(self) -> int:
        """A TCP port no other caller of this topology got, for a server a test starts."""
        with self._lock:
            return next(self._ports)

    def start_toy_server(
        self, host: str = "server", *, lifetime: float = 30.0
    ) -> tuple[subprocess.Popen[str], tuple[str, int]]:
        """Start the toy server of ``harness.netns.agents`` on ``host``; return once it listens."""
        endpoint = (self._plan.hosts[host].address, self.allocate_port())
        process = self.spawn(
            host,
            [
                "-m",
                "harness.netns.agents",
                "serve",
                "--address",
                endpoint[0],
                "--port",
                str(endpoint[1]),
                "--lifetime",
                str(lifetime),
            ],
        )
        read_line(process, 10.0)
        return process, endpoint

    def start_rendezvous(
        self, host: str = "server", *, lifetime: float = 600.0
    ) -> tuple[subprocess.Popen[str], str]:
        """Start the real rendezvous server (``harness.netns.agents rendezvous``, whose secret is
        ``agents.SECRET``) on ``host``; return it, once it listens, with its ``ip:port``."""
        address = self._plan.hosts[host].address
        port = self.allocate_port()
        process = self.spawn(
            host,
            [
                "-m",
                "harness.netns.agents",
                "rendezvous",
                "--address",
                address,
                "--port",
                str(port),
                "--health-port",
                str(self.allocate_port()),
                "--lifetime",
                str(lifetime),
            ],
        )
        # Importing cosmicai through `ip netns exec` takes a while on a busy machine.
        line = read_line(process, 30.0)
        if '"ready"' not in line:
            raise TopologyError(f"the rendezvous server on {host} did not start: {line}")
        return process, f"{address}:{port}"

    def conntrack(self, router: str) -> str:
        """The router's conntrack table, for diagnosing a failed punch."""
        return self.command(router, ["cat", "/proc/net/nf_conntrack"])

    def ruleset(self, router: str) -> str:
        return self.command(router, ["nft", "list", "ruleset"])

    # -- building and tearing down --------------------------------------------------------

    def __enter__(self) -> NatTopology:
        self.build()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build(self) -> NatTopology:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _add_netns(self, name: str) -> None:
        _sh(["ip", "netns", "add", name])
        # Recorded before anything else can fail, so close() removes it.
        self._created.append(name)

    def _ip(self, netns: str, lines: Sequence[str]) -> None:
        # One `ip -batch` per namespace instead of one process per command keeps setup fast.
        _sh(["ip", "-n", netns, "-batch", "-"], stdin="\n".join(lines) + "\n")

    def _sysctl(self, netns: str, settings: Mapping[str, str]) -> None:
        argv = ["ip", "netns", "exec", netns, "sysctl", "-q", "-w"]
        for key, value in settings.items():
            path = Path("/proc/sys") / key.replace(".", "/")
            # bridge-nf-* exist only where br_netfilter is loaded; nothing to turn off otherwise.
            if key.startswith("net.bridge.") and not path.exists():
                continue
            argv.append(f"{key}={value}")
        _sh(argv)

    def _veth(self, netns: str, ifname: str, peer_netns: str, peer: str) -> None:
        # Created directly inside our namespaces, so the host namespace never sees either end.
        words = f"link add {ifname} type veth peer name {peer} netns {peer_netns}".split()
        _sh(["ip", "-n", netns, *words])

    def _build(self) -> None:
        plan = self._plan
        self._add_netns(self.internet)
        for netns in [
            *(r.netns for r in plan.routers.values()),
            *(h.netns for h in plan.hosts.values()),
        ]:
            self._add_netns(netns)

        # Bridged traffic must not go through the ip-family hooks (br_netfilter would run it
        # through the routers' forward chain, whose policy is drop, and split LAN traffic).
        no_br_nf = {"net.bridge.bridge-nf-call-iptables": "0"}
        inet_prefix = f"/{PUBLIC_NETWORK.prefixlen}"
        self._ip(
            self.internet,
            [
                "link set lo up",
                "link add br0 type bridge",
                f"addr add {INTERNET_ADDRESS}{inet_prefix} dev br0",
                "link set br0 up",
            ],
        )
        self._sysctl(self.internet, {**no_br_nf, "net.ipv4.ip_forward": "0"})

        ports = itertools.count()
        for host in (h for h in plan.hosts.values() if h.router is None):
            port = f"p{next(ports)}"
            self._veth(host.netns, "eth0", self.internet, port)
            self._ip(self.internet, [f"link set {port} master br0", f"link set {port} up"])
            # No default route: the public segment is the whole "internet" here.
            self._ip(
                host.netns,
                [
                    "link set lo up",
                    f"addr add {host.address}{inet_prefix} dev eth0",
                    "link set eth0 up",
                ],
            )

        for router in plan.routers.values():
            port = f"p{next(ports)}"
            self._veth(router.netns, "wan", self.internet, port)
            self._ip(self.internet, [f"link set {port} master br0", f"link set {port} up"])
            self._ip(
                router.netns,
                [
                    "link set lo up",
                    f"addr add {router.public_address}{inet_prefix} dev wan",
                    "link set wan up",
                    "link add br0 type bridge",
                    f"addr add {router.lan_address}/{router.lan.prefixlen} dev br0",
                    "link set br0 up",
                ],
            )
            # ip_forward: the router routes LAN <-> wan. rp_filter off: a NAT must not drop
            # replies on reverse-path grounds (new namespaces copy the host's value).
            self._sysctl(
                router.netns,
                {
                    **no_br_nf,
                    "net.ipv4.ip_forward": "1",
                    "net.ipv4.conf.all.rp_filter": "0",
                    "net.ipv4.conf.default.rp_filter": "0",
                },
            )
            _sh(["ip", "netns", "exec", router.netns, "nft", "-f", "-"], stdin=_ruleset(router))

        for index, host in enumerate(h for h in plan.hosts.values() if h.router is not None):
            router = plan.routers[host.router or ""]
            port = f"l{index}"
            self._veth(host.netns, "eth0", router.netns, port)
            self._ip(router.netns, [f"link set {port} master br0", f"link set {port} up"])
            self._ip(
                host.netns,
                [
                    "link set lo up",
                    f"addr add {host.address}/{router.lan.prefixlen} dev eth0",
                    "link set eth0 up",
                    f"route add default via {router.lan_address}",
                ],
            )

    def close(self) -> None:
        """Kill what we spawned and delete every namespace we created (veths go with them)."""
        with self._lock:
            processes, self._processes = self._processes, []
        for process in processes:
            if process.poll() is None:
                # By pid: only processes this topology started.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired, OSError, ValueError):
                process.communicate(timeout=5)
        errors = []
        for netns in reversed(self._created):
            try:
                _sh(["ip", "netns", "delete", netns])
            except TopologyError as exc:
                errors.append(str(exc))
        self._created = []
        if errors:
            raise TopologyError("; ".join(errors))


def _ruleset(router: Router) -> str:
    masquerade = "masquerade random" if router.kind == "symmetric" else "masquerade"
    # "why" per rule:
    # - postrouting: translate only what leaves the LAN towards the public side.
    # - forward: replies of connections the LAN opened come back in (that conntrack match is the
    #   only way in, hence hole punching); anything new from wan to the LAN is dropped even when
    #   a public host routes to the private address directly.
    # - input: the router itself accepts nothing new from wan either, and drops instead of
    #   answering RST, so an unsolicited SYN to a public ip:port times out like on most NATs.
    return f"""
table ip cai_nat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" ip saddr {router.lan} {masquerade}
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "br0" oifname "wan" accept
    }}
    chain input {{
        type filter hook input priority filter; policy drop;
        iifname "lo" accept
        ct state established,related accept
        iifname "br0" accept
    }}
}}
"""


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The next stdout line of a spawned process, or TimeoutError after ``timeout`` seconds.

    A thread does the blocking readline: select() on a TextIOWrapper misses lines it already
    buffered. On timeout the thread stays blocked until the process dies (close() kills it).
    """
    stdout = process.stdout
    if stdout is None:
        raise ValueError("process was not spawned with a stdout pipe")
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not box:
        raise TimeoutError(f"no line from pid {process.pid} within {timeout} s")
    if not box[0]:
        stderr = ""
        with contextlib.suppress(subprocess.TimeoutExpired, OSError, ValueError):
            stderr = process.communicate(timeout=2)[1]
        raise EOFError(f"pid {process.pid} closed stdout (exit {process.poll()}): {stderr}")
    return box[0].rstrip("\n")
