"""Mutual authentication of a peer link: both ends prove they hold the job key.

Run on a connected TCP socket before any frame, whoever connected to whom (it is symmetric, so
it also works on a hole-punched socket from a simultaneous open)::

    each side sends   HELLO = b"CLNK" | version (1 byte) | rank (u32 BE) | nonce (32 bytes)
    each side sends   PROOF = HMAC-SHA256(job key, transcript || role)        (32 bytes)

    transcript = b"cosmicai-comm/1 link\\x00" | len(job id) (u16 BE) | job id (UTF-8)
                 | lower rank (u32 BE) | higher rank (u32 BE)
                 | nonce of the lower rank | nonce of the higher rank
    role       = 0x01 when the lower rank proves, 0x02 when the higher rank does

Both sides send their HELLO at once and their PROOF as soon as the peer's HELLO has arrived, so
the handshake costs one round trip plus one one-way trip. The nonces make every proof fresh
(a recorded proof is useless on another connection), the role byte keeps a peer from
reflecting our own proof back at us, and the job id and both ranks keep a proof made for one
link from passing on another. Digests are compared in constant time.

Anything else, a wrong key, an unexpected rank, garbage or silence until the deadline, raises
:class:`PeerAuthError` naming the fault. The handshake does not encrypt or sign later frames:
an on-path attacker who can inject into the TCP stream is out of its scope (as for the
rendezvous server's AUTH).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import socket
import struct
import time

from cosmicai.exceptions import PeerAuthError

HELLO_MAGIC = b"CLNK"
HANDSHAKE_VERSION = 1
NONCE_SIZE = 32
HELLO = struct.Struct("!4sBI32s")
HELLO_SIZE = HELLO.size  # 41
PROOF_SIZE = 32
TRANSCRIPT_CONTEXT = b"cosmicai-comm/1 link\x00"
ROLE_LOWER = 0x01
ROLE_HIGHER = 0x02
MIN_KEY_BYTES = 16
_JOB_KEY_CONTEXT = b"cosmicai-comm/1 job key\x00"


def derive_job_key(secret: bytes, job_id: str) -> bytes:
    """A key for one job from the deployment secret every worker already holds.

    Links of different jobs then never authenticate each other even if a worker of one job
    reaches a port of another.
    """
    return hmac.new(secret, _JOB_KEY_CONTEXT + job_id.encode(), hashlib.sha256).digest()


def link_proof(
    key: bytes,
    job_id: str,
    lower: tuple[int, bytes],
    higher: tuple[int, bytes],
    role: int,
) -> bytes:
    """The PROOF a side sends; ``lower`` and ``higher`` are (rank, nonce) of the two ends."""
    job = job_id.encode()
    transcript = b"".join(
        (
            TRANSCRIPT_CONTEXT,
            struct.pack("!H", len(job)),
            job,
            struct.pack("!II", lower[0], higher[0]),
            lower[1],
            higher[1],
            bytes([role]),
        )
    )
    return hmac.new(key, transcript, hashlib.sha256).digest()


def _recv_exactly(sock: socket.socket, count: int, deadline: float, what: str) -> bytes:
    # Exactly ``count`` bytes and never more: whatever follows belongs to the frames.
    chunks = bytearray()
    while len(chunks) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(count - len(chunks))
        if not chunk:
            raise PeerAuthError(
                f"the peer closed the connection after {len(chunks)} of the {count} bytes "
                f"of its {what}"
            )
        chunks += chunk
    return bytes(chunks)


def _send_all(sock: socket.socket, data: bytes, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    sock.settimeout(remaining)
    sock.sendall(data)


def authenticate_link(
    sock: socket.socket,
    *,
    rank: int,
    size: int,
    key: bytes,
    job_id: str,
    deadline: float,
    peer: int | None = None,
) -> int:
    """Run the handshake on ``sock``; return the peer's proven rank.

    ``deadline`` is a ``time.monotonic()`` instant. ``peer`` is the rank expected at the other
    end, or None to accept any other rank of the world (a listening side learns who called).
    The socket's timeout is restored afterwards; on failure the caller closes the socket.
    """
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the job key must be at least {MIN_KEY_BYTES} bytes")
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} is outside the world of size {size}")
    who = f"rank {peer}" if peer is not None else "the peer"
    nonce = os.urandom(NONCE_SIZE)
    saved_timeout = sock.gettimeout()
    try:
        _send_all(sock, HELLO.pack(HELLO_MAGIC, HANDSHAKE_VERSION, rank, nonce), deadline)
        hello = _recv_exactly(sock, HELLO_SIZE, deadline, "HELLO")
        magic, version, peer_rank, peer_nonce = HELLO.unpack(hello)
        if magic != HELLO_MAGIC:
            raise PeerAuthError(
                f"{who} sent {hello[:4]!r} instead of a link HELLO: not a cosmicai rank",
                peer=peer,
            )
        if version != HANDSHAKE_VERSION:
            raise PeerAuthError(
                f"{who} speaks link handshake version {version}, this rank {HANDSHAKE_VERSION}",
                peer=peer,
            )
        if peer is not None and peer_rank != peer:
            raise PeerAuthError(
                f"expected rank {peer} on this link, the peer says it is rank {peer_rank}",
                peer=peer,
            )
        if not 0 <= peer_rank < size or peer_rank == rank:
            raise PeerAuthError(
                f"the peer claims rank {peer_rank}, which is not another rank of this world "
                f"(size {size}, this is rank {rank})",
                peer=peer,
            )
        who = f"rank {peer_rank}"
        if hmac.compare_digest(peer_nonce, nonce):
            raise PeerAuthError(f"{who} echoed this rank's own nonce back", peer=peer_rank)
        ends = sorted([(rank, nonce), (peer_rank, peer_nonce)])
        own_role, peer_role = (
            (ROLE_LOWER, ROLE_HIGHER)
            if rank < peer_rank
            else (
                ROLE_HIGHER,
                ROLE_LOWER,
            )
        )
        _send_all(sock, link_proof(key, job_id, ends[0], ends[1], own_role), deadline)
        proof = _recv_exactly(sock, PROOF_SIZE, deadline, "PROOF")
        expected = link_proof(key, job_id, ends[0], ends[1], peer_role)
        if not hmac.compare_digest(proof, expected):
            raise PeerAuthError(
                f"{who} failed to prove the key of job {job_id!r} (wrong key or wrong job)",
                peer=peer_rank,
            )
        return int(peer_rank)
    except TimeoutError as exc:
        raise PeerAuthError(
            f"{who} did not complete the link handshake before the deadline", peer=peer
        ) from exc
    except PeerAuthError:
        raise
    except OSError as exc:
        raise PeerAuthError(f"link handshake with {who} failed: {exc}", peer=peer) from exc
    finally:
        # It fails only on a socket the peer already reset; the caller closes that anyway.
        with contextlib.suppress(OSError):
            sock.settimeout(saved_timeout)
