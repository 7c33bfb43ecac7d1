"""A transport address (IP, port) as both protocols report it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An IP address in text form and a TCP port."""

    host: str
    port: int

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"port {self.port} is outside 0..65535")

    @classmethod
    def from_sockaddr(cls, address: Any) -> Endpoint:
        """From a socket address as asyncio reports it: (host, port[, flowinfo, scope_id]).

        A dual-stack listener reports IPv4 clients as IPv4-mapped IPv6 (``::ffff:a.b.c.d``);
        those are unwrapped because TCPunch records and NAT hole punching need the IPv4 form.
        """
        # String checks, not ipaddress: this runs for every accepted connection.
        host = str(address[0])
        if ":" in host:
            host = host.split("%", 1)[0]
            if host.lower().startswith("::ffff:") and "." in host:
                host = host[7:]
        return cls(host, int(address[1]))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
