"""Frame encoding and the reassembly piece, fed every possible slicing of a stream."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cosmicai.comm.frames import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAPPED_PAYLOAD_MIN,
    Frame,
    FrameAssembler,
    FrameKind,
    decode_frame,
    encode_frame,
    encode_header,
)
from cosmicai.exceptions import CommProtocolError

LIMIT = 1 << 20


def summary(frames: list[Frame]) -> list[tuple[FrameKind, int, bytes]]:
    return [(f.kind, f.tag, bytes(f.payload)) for f in frames]


STREAM_FRAMES = [
    (FrameKind.OBJECT, 0, b"hello"),
    (FrameKind.BUFFER, -4, b""),
    (FrameKind.CONTROL, 2**31 - 1, b"\x00" * 3),
    (FrameKind.CLOSE, -(2**31), b"bye"),
]
STREAM = b"".join(encode_frame(kind, tag, payload) for kind, tag, payload in STREAM_FRAMES)


def test_header_layout_is_sixteen_bytes_big_endian() -> None:
    header = encode_header(FrameKind.BUFFER, -2, 258)
    assert header == b"CF\x01\x02" + b"\xff\xff\xff\xfe" + (258).to_bytes(8, "big")
    assert HEADER_SIZE == 16


def test_a_whole_stream_in_one_piece() -> None:
    assert summary(FrameAssembler(LIMIT).feed(STREAM)) == STREAM_FRAMES


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_a_stream_split_at_every_byte(cut: int) -> None:
    # GIVEN the stream cut in two at `cut`
    assembler = FrameAssembler(LIMIT)
    # WHEN both halves are fed
    frames = assembler.feed(STREAM[:cut]) + assembler.feed(STREAM[cut:])
    # THEN the frames come out whole and in order, and nothing is left over
    assert summary(frames) == STREAM_FRAMES
    assert assembler.at_boundary


def test_a_stream_fed_one_byte_at_a_time() -> None:
    assembler = FrameAssembler(LIMIT)
    frames: list[Frame] = []
    ends = _frame_ends()
    for index in range(len(STREAM)):
        frames += assembler.feed(STREAM[index : index + 1])
        # A partial frame is held exactly until its last byte arrives.
        assert assembler.at_boundary == (index + 1 in ends)
    assert summary(frames) == STREAM_FRAMES


def _frame_ends() -> set[int]:
    ends, position = set(), 0
    for _kind, _tag, payload in STREAM_FRAMES:
        position += HEADER_SIZE + len(payload)
        ends.add(position)
    return ends


def test_a_claim_receives_its_payload_in_place_through_the_window() -> None:
    # GIVEN a buffer claimed for the next BUFFER frame with tag 5
    target = bytearray(1000)
    assembler = FrameAssembler(LIMIT)
    claims: list[tuple[FrameKind, int, int]] = []

    def claim(kind: FrameKind, tag: int, length: int) -> memoryview | None:
        claims.append((kind, tag, length))
        return memoryview(target) if tag == 5 else None

    assembler.claim = claim
    payload = bytes(range(256)) * 3 + b"x" * 232
    data = encode_frame(FrameKind.OBJECT, 1, b"first") + encode_frame(FrameKind.BUFFER, 5, payload)
    # WHEN the header and a little payload are fed, then the rest written into the window
    frames = assembler.feed(data[: len(data) - 900])
    window = assembler.window()
    assert window is not None and window.nbytes == 900 and assembler.filling_claim
    window[:] = data[-900:]
    frames += assembler.advance(900)
    # THEN the claimed frame's payload is the target itself, filled; the other was not claimed
    assert [f.claimed for f in frames] == [False, True]
    assert frames[1].payload is target or bytes(frames[1].payload) == payload
    assert bytes(target) == payload
    assert assembler.claim is None  # one claim, one frame
    assert claims == [(FrameKind.OBJECT, 1, 5), (FrameKind.BUFFER, 5, 1000)]


@pytest.mark.parametrize(
    ("header", "fault"),
    [
        (HEADER.pack(b"XX", 1, 1, 0, 0), "out of step"),
        (HEADER.pack(MAGIC, 9, 1, 0, 0), "version 9"),
        (HEADER.pack(MAGIC, 1, 77, 0, 0), "kind 77"),
        (HEADER.pack(MAGIC, 1, 1, 0, LIMIT + 1), "exceeds the limit"),
    ],
)
def test_bad_headers_are_refused_before_anything_is_buffered(header: bytes, fault: str) -> None:
    with pytest.raises(CommProtocolError, match=fault):
        FrameAssembler(LIMIT).feed(header)


def test_a_tag_outside_32_bits_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="32-bit"):
        encode_header(FrameKind.OBJECT, 2**31, 0)


def test_decode_frame_checks_the_announced_length() -> None:
    data = encode_frame(FrameKind.OBJECT, 3, b"abc")
    frame = decode_frame(data, LIMIT)
    assert (frame.kind, frame.tag, bytes(frame.payload)) == (FrameKind.OBJECT, 3, b"abc")
    with pytest.raises(CommProtocolError, match="announces 3"):
        decode_frame(data + b"x", LIMIT)
    with pytest.raises(CommProtocolError, match="shorter than a frame header"):
        decode_frame(data[:10], LIMIT)


def resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_a_header_announcing_a_huge_payload_takes_memory_only_as_bytes_arrive() -> None:
    # GIVEN a receiver that accepts frames up to 2 GiB, and a 16-byte header claiming 1 GiB
    # (the old receiver allocated and zeroed it at once: 33 -> 1,057 MB)
    assembler = FrameAssembler(2 * 2**30)
    header = encode_header(FrameKind.OBJECT, 0, 2**30)
    before = resident_bytes()
    # WHEN the header and 3 MiB of the payload arrive
    assert assembler.feed(header + b"x" * (3 * 2**20)) == []
    window = assembler.window()
    grown = resident_bytes() - before
    # THEN the receiver's memory grew by about what arrived, not by what was announced
    assert grown < 64 * 2**20, grown
    assert window is not None and window.nbytes == 2**30 - 3 * 2**20


@pytest.mark.parametrize("through", ["feed", "window"])
def test_a_large_payload_arrives_whole_through_its_mapping(through: str) -> None:
    # GIVEN a payload large enough to be received into a memory mapping, in uneven pieces
    payload = bytes(range(256)) * (3 * MAPPED_PAYLOAD_MIN // 256 + 7)
    stream = encode_frame(FrameKind.OBJECT, 5, payload)
    assembler = FrameAssembler(len(payload))
    frames = assembler.feed(stream[: HEADER_SIZE + 1000])
    position = HEADER_SIZE + 1000
    while position < len(stream):
        if through == "window":
            # WHEN the caller reads into the window (as the TCP channel does) ...
            window = assembler.window()
            assert window is not None and window.nbytes > 0
            take = min(window.nbytes, 300_001, len(stream) - position)
            window[:take] = stream[position : position + take]
            frames += assembler.advance(take)
        else:
            # ... or feeds pieces
            take = min(300_001, len(stream) - position)
            frames += assembler.feed(stream[position : position + take])
        position += take
    # THEN one frame arrives with every byte in place
    assert len(frames) == 1 and frames[0].tag == 5 and bytes(frames[0].payload) == payload
    assert assembler.at_boundary
