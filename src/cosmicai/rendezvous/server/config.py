"""Settings of the rendezvous server: addresses, limits and deadlines, checked once at start."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from cosmicai.constants import DEFAULT_RENDEZVOUS_HEALTH_PORT, DEFAULT_RENDEZVOUS_PORT
from cosmicai.exceptions import RendezvousConfigError
from cosmicai.rendezvous.wire.auth import (
    DEFAULT_MAX_NONCES,
    DEFAULT_WINDOW_SECONDS,
    MIN_SECRET_BYTES,
)
from cosmicai.rendezvous.wire.framing import DEFAULT_MAX_REQUEST_FRAME


@dataclass(frozen=True)
class ServerConfig:
    """Every duration is in seconds. Port 0 picks a free port (tests, benchmarks)."""

    host: str = "0.0.0.0"
    port: int = DEFAULT_RENDEZVOUS_PORT
    #: Loopback by default: the health check runs inside the task (the container's own
    #: command), so strangers can neither read the counters nor crowd out the check.
    health_host: str = "127.0.0.1"
    health_port: int = DEFAULT_RENDEZVOUS_HEALTH_PORT
    #: The deployment secret native clients must prove; None serves them without auth.
    secret: bytes | None = field(default=None, repr=False)
    #: Serve TCPunch clients (they cannot authenticate: the protocol has no room for it).
    tcpunch: bool = True

    max_connections: int = 20_000
    #: Connections from one source address. Lambdas behind one NAT gateway share a public IP,
    #: so this must hold a whole world (``max_waiting_per_address``) and some to spare.
    max_connections_per_address: int = 4_352
    #: Connections not yet authenticated: native ones before their AUTH (or their preamble,
    #: without auth), and TCPunch ones throughout (they cannot authenticate). The rest of
    #: ``max_connections`` is kept for authenticated clients: strangers cannot fill it.
    max_unauthenticated: int = 4_096
    #: Of those, from one source address.
    max_unauthenticated_per_address: int = 1_024
    #: Waiting entries of authenticated clients (native pairs and world ranks).
    max_waiting: int = 20_000
    #: Lambdas behind one NAT gateway share a public IP, so this must hold a whole world.
    max_waiting_per_address: int = 4_096
    #: TCPunch clients waiting for a partner: a budget of their own, so unauthenticated
    #: clients never take the room of authenticated ones.
    max_tcpunch_waiting: int = 2_048
    max_tcpunch_waiting_per_address: int = 256
    max_world_size: int = 4_096
    max_frame_bytes: int = DEFAULT_MAX_REQUEST_FRAME
    #: Output a client has not read yet, beyond the frame being written, before it is dropped.
    max_write_buffer: int = 1 * 2**20

    #: From accept until the TCPunch name is in, or the native client has authenticated (its
    #: preamble, without auth). Never extended: an unauthenticated native connection ends then.
    hello_timeout: float = 5.0
    #: A native connection with nothing pending and no frame for this long is closed.
    idle_timeout: float = 30.0
    #: A TCPunch name is complete at 100 bytes, or when no byte has arrived for this long.
    tcpunch_name_settle: float = 0.01
    #: How long a TCPunch client may wait for its partner.
    tcpunch_wait: float = 120.0
    #: Caps on what native clients may ask for (they ask for less).
    max_pair_wait: float = 300.0
    max_world_deadline: float = 900.0
    auth_window: float = DEFAULT_WINDOW_SECONDS
    max_nonces: int = DEFAULT_MAX_NONCES

    backlog: int = 4096
    #: At shutdown, how long goodbyes may take to flush before sockets are aborted.
    shutdown_grace: float = 2.0

    def __post_init__(self) -> None:
        bad: list[str] = []
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.name in ("port", "health_port"):
                if not 0 <= value <= 0xFFFF:
                    bad.append(f"{spec.name} must be in 0..65535, not {value}")
            elif isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
                bad.append(f"{spec.name} must be positive, not {value}")
        if self.secret is not None and len(self.secret) < MIN_SECRET_BYTES:
            bad.append(f"the secret must be at least {MIN_SECRET_BYTES} bytes")
        if self.max_unauthenticated > self.max_connections:
            bad.append("max_unauthenticated must not exceed max_connections")
        if self.tcpunch_name_settle >= self.hello_timeout:
            bad.append("tcpunch_name_settle must be shorter than hello_timeout")
        if bad:
            raise RendezvousConfigError("invalid rendezvous server settings: " + "; ".join(bad))
