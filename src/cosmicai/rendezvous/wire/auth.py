"""Authentication of native clients: HMAC-SHA256 over a per-deployment secret.

A client proves it holds the deployment's secret with an AUTH message: a timestamp, a random
nonce and ``HMAC-SHA256(secret, AUTH_CONTEXT || timestamp || nonce)``. The server accepts a
timestamp within ``window`` seconds of its own clock and each nonce once: it remembers every
nonce it accepted for as long as that nonce's timestamp could still be accepted, so a captured
AUTH replayed on a new connection is refused, and the memory of nonces is bounded by the
window (and a hard cap, beyond which the server refuses rather than forgets).

This keeps strangers from registering; it does not protect a connection from an on-path
attacker, who could take over the TCP stream after the AUTH (there is no TLS).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time
from collections import deque
from collections.abc import Callable

from cosmicai.rendezvous.wire.messages import MAC_SIZE, NONCE_SIZE, Auth, ErrorCode

#: Domain separation: a MAC made for this protocol version is useless anywhere else.
AUTH_CONTEXT = b"cosmicai-rendezvous/1 auth\x00"
MIN_SECRET_BYTES = 16
DEFAULT_WINDOW_SECONDS = 60.0
DEFAULT_MAX_NONCES = 262_144


def auth_mac(secret: bytes, timestamp_ms: int, nonce: bytes) -> bytes:
    return hmac.new(
        secret, AUTH_CONTEXT + struct.pack("!Q", timestamp_ms) + nonce, hashlib.sha256
    ).digest()


def make_auth(secret: bytes, *, now: float | None = None, nonce: bytes | None = None) -> Auth:
    """A fresh AUTH message for ``secret`` (``now`` and ``nonce`` are for tests)."""
    timestamp_ms = int((time.time() if now is None else now) * 1000)
    nonce = os.urandom(NONCE_SIZE) if nonce is None else nonce
    return Auth(timestamp_ms, nonce, auth_mac(secret, timestamp_ms, nonce))


class Authenticator:
    """Checks AUTH messages against one secret, refusing stale timestamps and replays."""

    def __init__(
        self,
        secret: bytes,
        *,
        window: float = DEFAULT_WINDOW_SECONDS,
        max_nonces: int = DEFAULT_MAX_NONCES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the secret must be at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret
        self.window = window
        self.max_nonces = max_nonces
        self._clock = clock
        self._seen: set[bytes] = set()
        # Nonces in order of acceptance with the time they may be forgotten. A nonce accepted
        # at time a had timestamp t >= a - window, and stays acceptable until t + window, which
        # is at most a + 2 * window: forgetting at a + 2 * window is safe and keeps this FIFO.
        self._expiry: deque[tuple[float, bytes]] = deque()

    @property
    def remembered_nonces(self) -> int:
        return len(self._seen)

    def check(self, auth: Auth) -> ErrorCode | None:
        """None if ``auth`` is valid (its nonce is then spent), else why not."""
        # The MAC first: only holders of the secret may spend the server's nonce memory.
        expected = auth_mac(self._secret, auth.timestamp_ms, auth.nonce)
        if len(auth.mac) != MAC_SIZE or not hmac.compare_digest(expected, auth.mac):
            return ErrorCode.AUTH_BAD_MAC
        now = self._clock()
        if abs(now - auth.timestamp_ms / 1000) > self.window:
            return ErrorCode.AUTH_EXPIRED
        self._forget_expired(now)
        if auth.nonce in self._seen:
            return ErrorCode.AUTH_REPLAYED
        if len(self._seen) >= self.max_nonces:
            return ErrorCode.LIMIT_EXCEEDED
        self._seen.add(auth.nonce)
        self._expiry.append((now + 2 * self.window, auth.nonce))
        return None

    def _forget_expired(self, now: float) -> None:
        expiry = self._expiry
        while expiry and expiry[0][0] < now:
            self._seen.discard(expiry.popleft()[1])
