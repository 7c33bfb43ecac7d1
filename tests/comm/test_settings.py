"""CommSettings: the one reader of the COSMICAI_COMM_* environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from cosmicai import constants as c
from cosmicai.comm import CommSettings, Communicator, StoreLinks
from cosmicai.comm.frames import max_frame_bytes
from cosmicai.exceptions import CommError
from cosmicai.rendezvous.wire import Endpoint
from cosmicai.storage import LocalStorage


def test_an_argument_beats_the_environment_which_beats_the_default() -> None:
    environ = {c.ENV_COMM_DEADLINE: "12.5", c.ENV_COMM_MAX_FRAME_BYTES: "1024"}
    settings = CommSettings.from_env(environ=environ, max_frame_bytes=2048)
    assert settings.deadline_s == 12.5  # environment
    assert settings.max_frame_bytes == 2048  # argument
    assert settings.link_deadline_s == c.DEFAULT_COMM_LINK_DEADLINE  # default
    assert settings.store_poll_max_s == c.DEFAULT_COMM_STORE_POLL_MAX


def test_the_classes_read_the_environment_through_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(c.ENV_COMM_DEADLINE, "7")
    monkeypatch.setenv(c.ENV_COMM_MAX_FRAME_BYTES, "4096")
    monkeypatch.setenv(c.ENV_COMM_STORE_POLL_MAX, "0.25")
    links = StoreLinks(0, LocalStorage(tmp_path), "bucket", "prefix/")
    assert (links.max_payload, links.poll_max_s) == (4096, 0.25)
    assert max_frame_bytes() == 4096 and max_frame_bytes(10) == 10
    with Communicator(0, 1, links) as comm:
        assert comm.deadline_s == 7.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (c.ENV_COMM_DEADLINE, "soon"),
        (c.ENV_COMM_DEADLINE, "-1"),
        (c.ENV_COMM_LINK_DEADLINE, "nan"),
        (c.ENV_COMM_MAX_FRAME_BYTES, "1e6"),
        (c.ENV_COMM_MAX_FRAME_BYTES, "٣"),  # an Arabic-Indic digit: not ASCII
        (c.ENV_COMM_STORE_POLL_MAX, "inf"),
    ],
)
def test_a_bad_value_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(CommError, match=name):
        CommSettings.from_env(environ={name: value})


def test_direct_mode_reads_the_rendezvous_server_and_its_secret() -> None:
    environ = {c.ENV_RENDEZVOUS: "[::1]:10000", c.ENV_RENDEZVOUS_SECRET: "s" * 32}
    settings = CommSettings.from_env("direct", environ=environ)
    assert settings.rendezvous == Endpoint("::1", 10000)
    assert settings.secret == b"s" * 32
    # The store mode never looks at them.
    assert CommSettings.from_env("store", environ=environ).rendezvous is None
    with pytest.raises(CommError, match=c.ENV_RENDEZVOUS):
        CommSettings.from_env("direct", environ={c.ENV_RENDEZVOUS: "no-port"})
