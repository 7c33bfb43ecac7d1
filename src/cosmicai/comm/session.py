"""Opening a rank's communicator for a run, from the run's settings and the environment.

``store`` links every pair through the object store, under the run's own prefix. ``direct``
punches TCP links through NATs with the help of the rendezvous server (``COSMICAI_RENDEZVOUS``
= host:port, secret from ``COSMICAI_RENDEZVOUS_SECRET`` or ``COSMICAI_RENDEZVOUS_SECRET_ARN``)
and falls back to the object store per link where a direct link cannot be made in time. A
``direct`` run with no rendezvous server configured uses the store for every link and says so:
the results are the same, only slower.
"""

from __future__ import annotations

from cosmicai.comm.communicator import Communicator
from cosmicai.comm.handshake import derive_job_key
from cosmicai.comm.links import FallbackLinks, LinkMaker, StoreLinks
from cosmicai.comm.punch import punch_links
from cosmicai.comm.settings import CommSettings, Mode
from cosmicai.constants import ENV_RENDEZVOUS, ENV_RENDEZVOUS_SECRET, ENV_RENDEZVOUS_SECRET_ARN
from cosmicai.storage import Storage

__all__ = ["CommSettings", "open_communicator", "settings_from_env"]


def settings_from_env(mode: Mode) -> CommSettings:
    """Settings for ``mode`` from the environment the deployment (or local runner) set."""
    return CommSettings.from_env(mode)


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
    store = StoreLinks(
        rank,
        storage,
        bucket,
        prefix,
        max_payload=settings.max_frame_bytes,
        poll_max_s=settings.store_poll_max_s,
    )
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
            server = settings.rendezvous
            direct = punch_links(
                rank=rank,
                size=size,
                job_id=job_id,
                key=derive_job_key(settings.secret, job_id),
                rendezvous=server,
                rendezvous_secret=settings.secret,
                deadline_s=settings.deadline_s,
            )
            links = FallbackLinks(direct, store, link_deadline_s=settings.link_deadline_s)
            note = f"hole-punched TCP links via {server}, object store where they fail"
    return Communicator(rank, size, links, deadline_s=settings.deadline_s), note
