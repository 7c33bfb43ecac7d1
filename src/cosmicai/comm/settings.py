"""The communicator's settings, and the one place that reads them from the environment.

Every tunable is chosen the same way: an explicit argument, else its ``COSMICAI_COMM_*``
variable (names in ``cosmicai.constants``), else the default. ``direct`` links also need the
rendezvous server (``COSMICAI_RENDEZVOUS`` = host:port) and its secret
(``COSMICAI_RENDEZVOUS_SECRET`` or ``COSMICAI_RENDEZVOUS_SECRET_ARN``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from cosmicai.constants import (
    DEFAULT_COMM_DEADLINE,
    DEFAULT_COMM_LINK_DEADLINE,
    DEFAULT_COMM_MAX_FRAME_BYTES,
    DEFAULT_COMM_STORE_POLL_MAX,
    ENV_COMM_DEADLINE,
    ENV_COMM_LINK_DEADLINE,
    ENV_COMM_MAX_FRAME_BYTES,
    ENV_COMM_STORE_POLL_MAX,
    ENV_RENDEZVOUS,
    ENV_RENDEZVOUS_SECRET,
    ENV_RENDEZVOUS_SECRET_ARN,
)
from cosmicai.exceptions import CommError
from cosmicai.rendezvous.aws.secret import load_secret
from cosmicai.rendezvous.wire.endpoint import Endpoint

Mode = Literal["direct", "store"]


@dataclass(frozen=True)
class CommSettings:
    mode: Mode = "store"
    #: The rendezvous server, for ``direct``.
    rendezvous: Endpoint | None = None
    secret: bytes | None = field(default=None, repr=False)
    #: Seconds one collective may take (ranks start at different times: generous).
    deadline_s: float = DEFAULT_COMM_DEADLINE
    #: Seconds a direct link may take before that link uses the object store.
    link_deadline_s: float = DEFAULT_COMM_LINK_DEADLINE
    #: The largest frame payload a rank accepts from a peer.
    max_frame_bytes: int = DEFAULT_COMM_MAX_FRAME_BYTES
    #: Longest pause between two polls of the object store for a peer's message.
    store_poll_max_s: float = DEFAULT_COMM_STORE_POLL_MAX

    @classmethod
    def from_env(
        cls,
        mode: Mode = "store",
        *,
        environ: Mapping[str, str] | None = None,
        deadline_s: float | None = None,
        link_deadline_s: float | None = None,
        max_frame_bytes: int | None = None,
        store_poll_max_s: float | None = None,
    ) -> CommSettings:
        """Settings for ``mode``: each argument given, else the environment, else the default.

        Raises :class:`CommError` naming the variable when one holds a bad value.
        """
        env = os.environ if environ is None else environ
        rendezvous = None
        secret = None
        if mode == "direct" and env.get(ENV_RENDEZVOUS):
            try:
                rendezvous = Endpoint.parse(env[ENV_RENDEZVOUS])
            except ValueError as exc:
                raise CommError(f"{ENV_RENDEZVOUS}: {exc}") from None
            secret = load_secret(
                value=env.get(ENV_RENDEZVOUS_SECRET) or None,
                secret_arn=env.get(ENV_RENDEZVOUS_SECRET_ARN) or None,
            )
        return cls(
            mode=mode,
            rendezvous=rendezvous,
            secret=secret,
            deadline_s=_seconds(env, ENV_COMM_DEADLINE, deadline_s, DEFAULT_COMM_DEADLINE),
            link_deadline_s=_seconds(
                env, ENV_COMM_LINK_DEADLINE, link_deadline_s, DEFAULT_COMM_LINK_DEADLINE
            ),
            max_frame_bytes=_bytes(
                env, ENV_COMM_MAX_FRAME_BYTES, max_frame_bytes, DEFAULT_COMM_MAX_FRAME_BYTES
            ),
            store_poll_max_s=_seconds(
                env, ENV_COMM_STORE_POLL_MAX, store_poll_max_s, DEFAULT_COMM_STORE_POLL_MAX
            ),
        )


def _seconds(env: Mapping[str, str], name: str, explicit: float | None, default: float) -> float:
    if explicit is not None:
        return explicit
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise CommError(f"{name}={text!r} is not a positive number of seconds")
    return value


def _bytes(env: Mapping[str, str], name: str, explicit: int | None, default: int) -> int:
    if explicit is not None:
        return explicit
    text = env.get(name, "").strip()
    if not text:
        return default
    if not (text.isascii() and text.isdigit() and int(text) > 0):
        raise CommError(f"{name}={text!r} is not a positive whole number of bytes")
    return int(text)
