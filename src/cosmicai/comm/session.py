"""Opening a rank's communicator for a run, from the run's settings and the environment.

``store`` links every pair through the object store, under the run's own prefix. ``direct``
punches TCP links through NATs with the help of the rendezvous server (``COSMICAI_RENDEZVOUS``
= host:port, secret from ``COSMICAI_RENDEZVOUS_SECRET`` or ``COSMICAI_RENDEZVOUS_SECRET_ARN``)
and falls back to the object store per link where a direct link cannot be made in time. A
``direct`` run with no rendezvous server configured uses the store for every link and says so:
the results are the same, only slower.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from cosmicai.comm.communicator import Communicator
from cosmicai.comm.handshake import derive_job_key
from cosmicai.comm.links import FallbackLinks, LinkMaker, StoreLinks
from cosmicai.constants import (
    DEFAULT_COMM_DEADLINE,
    DEFAULT_COMM_LINK_DEADLINE,
    ENV_COMM_DEADLINE,
    ENV_COMM_LINK_DEADLINE,
    ENV_RENDEZVOUS,
    ENV_RENDEZVOUS_SECRET,
    ENV_RENDEZVOUS_SECRET_ARN,
)
from cosmicai.exceptions import CommError
from cosmicai.storage import Storage


@dataclass(frozen=True)
class CommSettings:
    mode: Literal["direct", "store"]
    #: (host, port) of the rendezvous server, for ``direct``.
    rendezvous: tuple[str, int] | None = None
    secret: bytes | None = field(default=None, repr=False)
    #: Seconds one collective may take (ranks start at different times: generous).
    deadline_s: float = DEFAULT_COMM_DEADLINE
    #: Seconds a direct link may take before that link uses the object store.
    link_deadline_s: float = DEFAULT_COMM_LINK_DEADLINE


def parse_endpoint(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CommError(f"rendezvous endpoint {text!r} is not host:port")
    return host.strip("[]"), int(port)


def settings_from_env(mode: Literal["direct", "store"]) -> CommSettings:
    """Settings for ``mode`` from the environment the deployment (or local runner) set."""
    rendezvous = None
    secret = None
    if mode == "direct" and os.environ.get(ENV_RENDEZVOUS):
        from cosmicai.rendezvous.secret import load_secret

        rendezvous = parse_endpoint(os.environ[ENV_RENDEZVOUS])
        secret = load_secret(
            value=os.environ.get(ENV_RENDEZVOUS_SECRET) or None,
            secret_arn=os.environ.get(ENV_RENDEZVOUS_SECRET_ARN) or None,
        )
    return CommSettings(
        mode=mode,
        rendezvous=rendezvous,
        secret=secret,
        deadline_s=float(os.environ.get(ENV_COMM_DEADLINE, DEFAULT_COMM_DEADLINE)),
        link_deadline_s=float(os.environ.get(ENV_COMM_LINK_DEADLINE, DEFAULT_COMM_LINK_DEADLINE)),
    )


def open_communicator(
    settings: CommSettings,
    *,
    rank: int,
    size: int,
    job_id: str,
    storage: Storage,
    bucket: str,
    prefix: str,
) -> tuple[Communicator, str]:
    """A communicator for ``rank`` of ``size``, and a sentence saying which links it uses."""
    store = StoreLinks(rank, storage, bucket, prefix)
    links: LinkMaker = store
    note = "object store links"
    if settings.mode == "direct":
        if settings.rendezvous is None or settings.secret is None:
            note = (
                "direct links requested but no rendezvous server and secret are configured "
                f"({ENV_RENDEZVOUS}, {ENV_RENDEZVOUS_SECRET}/{ENV_RENDEZVOUS_SECRET_ARN}): "
                "object store links"
            )
        else:
            from cosmicai.comm.punch import punch_links

            host, port = settings.rendezvous
            direct = punch_links(
                rank=rank,
                size=size,
                job_id=job_id,
                key=derive_job_key(settings.secret, job_id),
                rendezvous_host=host,
                rendezvous_port=port,
                rendezvous_secret=settings.secret,
                deadline_s=settings.deadline_s,
            )
            links = FallbackLinks(direct, store, link_deadline_s=settings.link_deadline_s)
            note = f"hole-punched TCP links via {host}:{port}, object store where they fail"
    return Communicator(rank, size, links, deadline_s=settings.deadline_s), note
