"""A transport address (IP or host name, port): what both rendezvous protocols report and what
the communicator connects to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A host (an IP address in text form, or a name to resolve) and a TCP port."""

    host: str
    port: int

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"port {self.port} is outside 0..65535")

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """``host:port`` or ``[IPv6]:port``; raises ValueError naming the text otherwise."""
        host, sep, port = text.strip().rpartition(":")
        host = host.strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        # isascii: str.isdigit accepts other scripts' digits, which int() then reads.
        if not (sep and host and port.isascii() and port.isdigit() and 0 < int(port) <= 0xFFFF):
            raise ValueError(f"{text!r} is not host:port (a port in 1..65535)")
        return cls(host, int(port))

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

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) pair the socket module takes."""
        return (self.host, self.port)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
