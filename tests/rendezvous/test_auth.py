"""HMAC authentication: the right secret, a fresh timestamp and an unused nonce, or refusal."""

from __future__ import annotations

import pytest

from cosmicai.rendezvous.wire.auth import Authenticator, make_auth
from cosmicai.rendezvous.wire.messages import ErrorCode

SECRET = b"0123456789abcdef0123456789abcdef"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_valid_auth_is_accepted_once() -> None:
    # GIVEN a server clock and an AUTH made now with the deployment secret
    clock = Clock(1_000_000.0)
    authenticator = Authenticator(SECRET, window=60, clock=clock)
    auth = make_auth(SECRET, now=clock.now)
    # WHEN it is checked twice
    # THEN the first passes and the second is a replay
    assert authenticator.check(auth) is None
    assert authenticator.check(auth) is ErrorCode.AUTH_REPLAYED


def test_wrong_secret_is_refused_without_spending_a_nonce() -> None:
    clock = Clock(1_000_000.0)
    authenticator = Authenticator(SECRET, clock=clock)
    assert authenticator.check(make_auth(b"x" * 32, now=clock.now)) is ErrorCode.AUTH_BAD_MAC
    assert authenticator.remembered_nonces == 0


@pytest.mark.parametrize("skew", [-61.0, 61.0])
def test_timestamp_outside_the_window_is_refused(skew: float) -> None:
    clock = Clock(1_000_000.0)
    authenticator = Authenticator(SECRET, window=60, clock=clock)
    assert authenticator.check(make_auth(SECRET, now=clock.now + skew)) is ErrorCode.AUTH_EXPIRED


def test_replay_is_refused_for_as_long_as_the_timestamp_is_acceptable() -> None:
    # GIVEN an AUTH accepted at the far end of the window (timestamp 60 s ahead)
    clock = Clock(1_000_000.0)
    authenticator = Authenticator(SECRET, window=60, clock=clock)
    auth = make_auth(SECRET, now=clock.now + 60)
    assert authenticator.check(auth) is None
    # WHEN it is replayed just before its timestamp leaves the window
    clock.now += 119.9
    # THEN the nonce is still remembered
    assert authenticator.check(auth) is ErrorCode.AUTH_REPLAYED
    # AND once the timestamp is out of the window the nonce is forgotten and still refused
    clock.now += 200
    assert authenticator.check(auth) is ErrorCode.AUTH_EXPIRED
    authenticator.check(make_auth(SECRET, now=clock.now))
    assert authenticator.remembered_nonces == 1


def test_full_nonce_memory_refuses_rather_than_forgets() -> None:
    clock = Clock(1_000_000.0)
    authenticator = Authenticator(SECRET, max_nonces=2, clock=clock)
    assert authenticator.check(make_auth(SECRET, now=clock.now)) is None
    assert authenticator.check(make_auth(SECRET, now=clock.now)) is None
    assert authenticator.check(make_auth(SECRET, now=clock.now)) is ErrorCode.LIMIT_EXCEEDED


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Authenticator(b"short")
