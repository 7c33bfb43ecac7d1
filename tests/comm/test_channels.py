"""Both channels behind one interface: the same tests, the same results."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from cosmicai.comm import ANY_TAG, StoreChannel, TcpChannel
from cosmicai.comm.channel import Channel
from cosmicai.comm.frames import FrameKind, encode_frame
from cosmicai.comm.store import frame_key
from cosmicai.exceptions import CommError, CommProtocolError, CommTimeoutError, PeerLostError
from cosmicai.storage import LocalStorage, Storage
from harness.worlds import BUCKET


def tcp_socket_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname()[:2])
        server, _ = listener.accept()
    return client, server


@pytest.fixture(params=["tcp", "store"])
def channels(
    request: pytest.FixtureRequest, local_storage: Storage
) -> Iterator[tuple[Channel, Channel]]:
    """Rank 0's and rank 1's ends of one link."""
    pair: tuple[Channel, Channel]
    if request.param == "tcp":
        left, right = tcp_socket_pair()
        pair = (TcpChannel(left, 1), TcpChannel(right, 0))
    else:
        pair = (
            StoreChannel(local_storage, BUCKET, "links", rank=0, peer=1, poll_max_s=0.005),
            StoreChannel(local_storage, BUCKET, "links", rank=1, peer=0, poll_max_s=0.005),
        )
    yield pair
    for channel in pair:
        channel.close()


def soon(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


def test_frames_with_other_tags_wait_until_asked_for(channels: tuple[Channel, Channel]) -> None:
    # GIVEN three messages with tags 1, 2, 1
    a, b = channels
    for tag, payload in [(1, b"first"), (2, b"second"), (1, b"third")]:
        a.send(FrameKind.OBJECT, tag, [payload], soon())
    # WHEN tag 2 is asked for first
    # THEN it comes out, and tag 1's messages keep their order
    assert bytes(b.recv(2, soon()).payload) == b"second"
    assert bytes(b.recv(1, soon()).payload) == b"first"
    assert bytes(b.recv(ANY_TAG, soon()).payload) == b"third"


def test_any_tag_never_matches_the_communicators_own_tags(
    channels: tuple[Channel, Channel],
) -> None:
    a, b = channels
    a.send(FrameKind.OBJECT, -3, [b"internal"], soon())
    a.send(FrameKind.OBJECT, 5, [b"user"], soon())
    assert b.recv(ANY_TAG, soon()).tag == 5
    assert bytes(b.recv(-3, soon()).payload) == b"internal"


def test_a_payload_in_several_parts_arrives_as_one(channels: tuple[Channel, Channel]) -> None:
    a, b = channels
    a.send(FrameKind.BUFFER, 0, [b"ab", memoryview(b"cd"), bytearray(b""), b"e"], soon())
    assert bytes(b.recv(0, soon()).payload) == b"abcde"


def test_a_buffer_frame_lands_in_the_callers_buffer(channels: tuple[Channel, Channel]) -> None:
    a, b = channels
    data = np.arange(300_000, dtype=np.float64)
    a.send(FrameKind.BUFFER, 4, [data.data.cast("B")], soon())
    target = np.zeros_like(data)
    frame = b.recv(4, soon(), target.data.cast("B"))
    assert frame.claimed
    np.testing.assert_array_equal(target, data)


def test_a_frame_of_another_size_is_not_claimed(channels: tuple[Channel, Channel]) -> None:
    a, b = channels
    a.send(FrameKind.BUFFER, 4, [b"12345"], soon())
    target = bytearray(4)
    frame = b.recv(4, soon(), memoryview(target))
    assert not frame.claimed and bytes(frame.payload) == b"12345" and target == bytearray(4)


def test_large_exchanges_in_both_directions_do_not_deadlock(
    channels: tuple[Channel, Channel],
) -> None:
    # GIVEN both ends sending 16 MB to each other at the same moment (far beyond socket buffers)
    a, b = channels
    size = 2 * 2**20
    outgoing = [np.full(size, rank, dtype=np.float64) for rank in range(2)]
    incoming = [np.empty(size) for _ in range(2)]
    errors: list[BaseException] = []

    def run(rank: int, channel: Channel) -> None:
        try:
            view = outgoing[rank].data.cast("B")
            into = incoming[rank].data.cast("B")
            frame = channel.exchange(FrameKind.BUFFER, -4, [view], soon(30), into)
            assert frame.claimed
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(r, c)) for r, c in enumerate((a, b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    # THEN both complete with the other's data
    assert not errors
    assert (incoming[0] == 1).all() and (incoming[1] == 0).all()


def test_a_missing_message_times_out_naming_the_peer(channels: tuple[Channel, Channel]) -> None:
    _a, b = channels
    with pytest.raises(CommTimeoutError, match="rank 0 did not answer") as caught:
        b.recv(9, soon(0.1))
    assert caught.value.peer == 0
    # A timeout between frames leaves the link usable.
    channels[0].send(FrameKind.OBJECT, 9, [b"late"], soon())
    assert bytes(b.recv(9, soon()).payload) == b"late"


def test_a_closing_peer_is_reported_with_its_reason(channels: tuple[Channel, Channel]) -> None:
    a, b = channels
    a.send(FrameKind.OBJECT, 1, [b"last words"], soon())
    a.close("rank 0 aborted: testing")
    # What was sent before the goodbye is still delivered...
    assert bytes(b.recv(1, soon()).payload) == b"last words"
    # ...and then the peer's reason, at once rather than at the deadline.
    with pytest.raises(PeerLostError, match="testing") as caught:
        b.recv(1, soon(30))
    assert caught.value.peer == 0


def test_a_tcp_peer_that_dies_is_lost_not_waited_for() -> None:
    left, right = tcp_socket_pair()
    channel = TcpChannel(right, 0)
    left.close()  # no goodbye frame: as when the process is killed
    with pytest.raises(PeerLostError, match="without a goodbye"):
        channel.recv(0, soon(30))
    channel.close()


def test_garbage_on_a_tcp_link_breaks_it_for_good() -> None:
    left, right = tcp_socket_pair()
    channel = TcpChannel(right, 0)
    left.sendall(b"GARBAGE-GARBAGE-GARBAGE")
    with pytest.raises(CommProtocolError, match="out of step"):
        channel.recv(0, soon())
    with pytest.raises(CommError, match="unusable after an earlier error"):
        channel.send(FrameKind.OBJECT, 0, [b"x"], soon())
    channel.close()
    left.close()


def test_store_frames_are_sequenced_and_deleted_once_read(local_storage: LocalStorage) -> None:
    a = StoreChannel(local_storage, BUCKET, "job/comm", rank=0, peer=1)
    b = StoreChannel(local_storage, BUCKET, "job/comm", rank=1, peer=0)
    a.send(FrameKind.OBJECT, 0, [b"one"], soon())
    a.send(FrameKind.OBJECT, 0, [b"two"], soon())
    keys = [info.key for info in local_storage.list(BUCKET, "job/comm/")]
    assert keys == [frame_key("job/comm/", 0, 1, 0), frame_key("job/comm/", 0, 1, 1)]
    assert keys[0] == "job/comm/0-1/000000000000"
    assert local_storage.get(BUCKET, keys[0]) == encode_frame(FrameKind.OBJECT, 0, b"one")
    assert bytes(b.recv(0, soon()).payload) == b"one"
    assert [info.key for info in local_storage.list(BUCKET, "job/comm/")] == keys[1:]
    assert bytes(b.recv(0, soon()).payload) == b"two"
    assert list(local_storage.list(BUCKET, "job/comm/")) == []


def test_a_corrupt_store_object_is_a_protocol_error(local_storage: LocalStorage) -> None:
    b = StoreChannel(local_storage, BUCKET, "job/comm", rank=1, peer=0)
    local_storage.put(BUCKET, frame_key("job/comm/", 0, 1, 0), b"not a frame at all")
    with pytest.raises(CommProtocolError, match="0-1/000000000000"):
        b.recv(0, soon())


def test_a_frame_above_the_limit_is_refused_before_sending() -> None:
    left, right = tcp_socket_pair()
    sender, receiver = TcpChannel(left, 1, max_payload=8), TcpChannel(right, 0)
    with pytest.raises(ValueError, match="exceeds the limit of 8"):
        sender.send(FrameKind.BUFFER, 0, [b"123456789"], soon())
    # Nothing went out: the link still carries the next frame intact.
    sender.send(FrameKind.BUFFER, 0, [b"1234"], soon())
    assert bytes(receiver.recv(0, soon()).payload) == b"1234"
    sender.close()
    receiver.close()
