"""The wire formats, byte by byte: TCPunch records, native preamble, frames and messages."""

from __future__ import annotations

import pytest

from cosmicai.exceptions import RendezvousProtocolError
from cosmicai.rendezvous.wire.auth import make_auth
from cosmicai.rendezvous.wire.endpoint import Endpoint
from cosmicai.rendezvous.wire.framing import (
    MAGIC,
    PREAMBLE,
    FrameDecoder,
    FrameTooLargeError,
    encode_frame,
    parse_preamble,
)
from cosmicai.rendezvous.wire.messages import (
    Accepted,
    Auth,
    AuthOk,
    Error,
    ErrorCode,
    Leave,
    Left,
    Message,
    Pair,
    Peer,
    PeerRecord,
    Register,
    UnknownMessageTypeError,
    World,
    decode,
    encode,
)
from cosmicai.rendezvous.wire.tcpunch import decode_record, encode_record

V4 = Endpoint("203.0.113.7", 40001)
V6 = Endpoint("2001:db8::1", 443)


def test_tcpunch_record_is_ipv4_port_and_two_zero_bytes() -> None:
    # GIVEN the public endpoint 203.0.113.7:40001 (port 0x9c41)
    # WHEN it is encoded as TCPunch does
    record = encode_record(V4)
    # THEN the 8 bytes are the address, the big-endian port and two zero bytes
    assert record == bytes([203, 0, 113, 7, 0x9C, 0x41, 0, 0])
    assert decode_record(record) == V4


def test_tcpunch_record_refuses_ipv6_and_wrong_sizes() -> None:
    with pytest.raises(ValueError, match="IPv4 only"):
        encode_record(V6)
    with pytest.raises(RendezvousProtocolError, match="8 bytes, got 7"):
        decode_record(b"\x00" * 7)


def test_preamble_is_zero_byte_magic_and_version() -> None:
    # The zero first byte is what tells a native client from a TCPunch pairing name.
    assert PREAMBLE == b"\x00CRV\x01"
    assert PREAMBLE[0] == 0 and MAGIC[0] == 0
    assert parse_preamble(PREAMBLE) == 1
    with pytest.raises(RendezvousProtocolError, match="not a cosmicai rendezvous preamble"):
        parse_preamble(b"\x00XYZ\x01")


MESSAGES: list[Message] = [
    Auth(1_700_000_000_123, bytes(range(16)), bytes(range(32))),
    Pair("fmi-pair-0-1", 30_000, Endpoint("10.0.0.5", 5000)),
    Pair("ünïcode", 1, None),
    Register("run-42", 4, 3, 60_000, V6),
    Leave(),
    AuthOk(1_700_000_000_000),
    Accepted(V4, 29_999),
    Peer(V4, Endpoint("10.0.0.9", 6000)),
    Peer(V6, None),
    World((PeerRecord(0, V4, None), PeerRecord(1, V6, Endpoint("10.0.0.2", 1)))),
    Left(),
    Error(ErrorCode.WORLD_INCOMPLETE, "world 'x' incomplete"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: Message) -> None:
    # GIVEN a message WHEN it is framed and decoded again
    frame = encode(message)
    length = int.from_bytes(frame[:4], "big")
    # THEN the length counts the type byte and the payload, and nothing is lost
    assert length == len(frame) - 4
    assert decode(frame[4], frame[5:]) == message


def test_pair_bytes_match_the_specification() -> None:
    # GIVEN the example of docs/rendezvous-protocol.md
    frame = encode(Pair("ab", 30_000, Endpoint("10.0.0.5", 5000)))
    # THEN every byte is where the document says
    assert frame.hex() == (
        "0000000f"  # length 15 = type byte + 14 payload bytes
        "02"  # PAIR
        "00007530"  # wait 30,000 ms
        "04"
        "0a000005"
        "1388"  # private endpoint: IPv4 10.0.0.5, port 5000
        "02"
        "6162"  # name: 2 bytes, "ab"
    )


@pytest.mark.parametrize(
    ("message_type", "payload", "fault"),
    [
        (0x02, b"\x00\x00\x75\x30\x00\x00", "pairing name is empty"),
        (0x02, b"\x00\x00\x75\x30\x07", "family 7"),
        (0x02, b"\x00\x00\x75\x30\x00\x03ab", "payload ends inside pairing name"),
        (0x02, b"\x00\x00\x75\x30\x00\x01\xff", "not UTF-8"),
        (0x04, b"\x00", "1 unexpected bytes"),
        (0x01, b"\x00" * 10, "payload ends inside nonce"),
        (0x84, b"\xff\xff\xff\xff", "cannot fit"),
        (0x83, b"\x00\x00", "public endpoint is missing"),
    ],
)
def test_decoding_is_strict_and_names_the_fault(
    message_type: int, payload: bytes, fault: str
) -> None:
    with pytest.raises(RendezvousProtocolError, match=fault):
        decode(message_type, payload)


def test_unknown_message_type_is_its_own_error() -> None:
    with pytest.raises(UnknownMessageTypeError, match="0x42"):
        decode(0x42, b"")


def test_decoder_reassembles_frames_split_at_every_byte() -> None:
    # GIVEN three frames sent as one byte stream
    stream = encode(Leave()) + encode(Pair("name", 5, V4)) + encode(Leave())
    decoder = FrameDecoder(4096)
    # WHEN the stream arrives one byte at a time
    frames = [frame for i in range(len(stream)) for frame in decoder.feed(stream[i : i + 1])]
    # THEN the same three frames come out, and nothing stays buffered
    assert [decode(t, p) for t, p in frames] == [Leave(), Pair("name", 5, V4), Leave()]
    assert decoder.buffered == 0


def test_decoder_returns_every_frame_of_one_chunk_and_keeps_the_partial_one() -> None:
    stream = encode(Leave()) * 3 + encode(Left())[:3]
    decoder = FrameDecoder(4096)
    assert len(decoder.feed(stream)) == 3
    assert decoder.buffered == 3


def test_decoder_refuses_an_oversized_frame_from_its_header_alone() -> None:
    # GIVEN a decoder capped at 64 bytes
    decoder = FrameDecoder(64)
    # WHEN only the length of a 65-byte frame has arrived
    # THEN it is refused before any of the frame is buffered
    with pytest.raises(FrameTooLargeError, match="65 bytes exceeds the limit of 64"):
        decoder.feed((65).to_bytes(4, "big"))


def test_decoder_refuses_a_zero_length_frame() -> None:
    with pytest.raises(RendezvousProtocolError, match="length 0"):
        FrameDecoder(64).feed(b"\x00\x00\x00\x00")


def test_frame_encoding_counts_type_byte() -> None:
    assert encode_frame(0x04) == b"\x00\x00\x00\x01\x04"


def test_error_messages_are_cut_to_valid_utf8() -> None:
    frame = encode(Error(1, "é" * 2000))
    message = decode(frame[4], frame[5:])
    assert isinstance(message, Error)
    assert len(message.message.encode()) <= 1024


def test_auth_test_vector_of_the_protocol_document() -> None:
    # GIVEN the secret, timestamp and nonce of docs/rendezvous-protocol.md §3.5
    secret = b"example-deployment-secret-0123456789"
    auth = make_auth(secret, now=1767225600.0, nonce=bytes(range(16)))
    # THEN the MAC and the frame are the ones the document shows
    assert auth.timestamp_ms == 1767225600000
    assert auth.mac.hex() == "aa33e4960b94fb1aa281506a230dd557527b385deb8dbf78c3ed32627a854e88"
    assert encode(auth)[:5] == bytes.fromhex("0000003901")


def test_world_bytes_match_the_documented_exchange() -> None:
    world = World(
        (
            PeerRecord(0, Endpoint("198.51.100.4", 50000), Endpoint("10.0.3.5", 40100)),
            PeerRecord(1, Endpoint("203.0.113.9", 61001), Endpoint("10.0.3.7", 40123)),
        )
    )
    assert encode(world).hex() == (
        "0000002984" "00000002"
        "00000000" "04c6336404c350" "040a0003059ca4"
        "00000001" "04cb007109ee49" "040a0003079cbb"
    )  # fmt: skip
    register = Register("run-42", 2, 1, 60_000, Endpoint("10.0.3.7", 40123))
    assert (
        encode(register).hex() == "0000001b0300000002000000010000ea60040a0003079cbb0672756e2d3432"
    )
