"""relay.frames.FrameScanner against frames built here independently, cut into chunks at random places."""
import os
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from observability.metrics import Tally
from relay.frames import PING_MARK, FrameScanner, ProtocolError
from tests.helpers.frames import frame


def inspect_text_and_text_frames(opcode, first):
    return opcode == 1 or (opcode == 2 and first == 0x0A)


def scan(stream, cuts, max_size=1 << 20, inspect=inspect_text_and_text_frames):
    """Feed `stream` cut at `cuts`; (forwarded bytes, messages, events, boundaries seen as stream offsets)."""
    scanner = FrameScanner(inspect, max_size, Tally())
    forwarded, messages, events, boundaries = b"", [], [], []
    edges = sorted({c for c in cuts if 0 < c < len(stream)})
    for start, end in zip([0] + edges, edges + [len(stream)]):
        forward, done, event = scanner.feed(stream[start:end])
        if scanner.boundary is not None:
            boundaries.append(len(forwarded) + scanner.boundary)
        forwarded += bytes(forward)
        messages += done or []
        if event:
            events.append(event)
            if event[0] == "close":
                break
    return forwarded, messages, events, boundaries, scanner


# Short payloads, and long ones (64 KiB and over: the 8-byte length, and frames that span chunks) of seeded bytes.
payloads = st.binary(max_size=300) | st.integers(65530, 70000).map(lambda n: random.Random(n).randbytes(n))
masks = st.none() | st.binary(min_size=4, max_size=4)


@st.composite
def conversations(draw):
    """A stream of messages (some fragmented), pings and pongs between them, and what the scanner should see."""
    stream, expected_forward, expected_messages, frame_ends = b"", b"", [], [0]
    mask = draw(masks)
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["text", "binary", "speak", "ping", "pong", "our pong"]))
        if kind in ("ping", "pong", "our pong"):
            payload = PING_MARK if kind == "our pong" else draw(st.binary(max_size=125))
            raw = frame(0x9 if kind == "ping" else 0xA, payload, mask=mask)
            stream += raw
            if kind == "ping" or payload != PING_MARK:  # a pong carrying the mark answers the gateway's ping
                expected_forward += raw
            frame_ends.append(len(expected_forward))
            continue
        payload = draw(payloads)
        if kind == "speak":
            payload = b"\x0a" + payload
        opcode = 1 if kind == "text" else 2
        parts = draw(st.integers(1, 3)) if payload else 1
        size = -(-len(payload) // parts) if payload else 0
        pieces = [payload[i:i + size] for i in range(0, len(payload), size)] if payload else [b""]
        for i, piece in enumerate(pieces):
            raw = frame(opcode if i == 0 else 0, piece, fin=i == len(pieces) - 1, mask=mask)
            stream += raw
            expected_forward += raw
            frame_ends.append(len(expected_forward))
        if inspect_text_and_text_frames(opcode, payload[0] if payload else None):
            expected_messages.append((opcode, payload))
    return stream, expected_forward, expected_messages, frame_ends


@settings(max_examples=300, deadline=None, derandomize=True)
@given(conversations(), st.lists(st.integers(0, 200000), max_size=12))
def test_chunks_pass_unchanged_and_inspected_messages_come_out_whole(conversation, cuts):
    stream, expected_forward, expected_messages, frame_ends = conversation
    forwarded, messages, events, boundaries, scanner = scan(stream, cuts)
    assert forwarded == expected_forward
    assert messages == expected_messages
    assert all(event == ("pong",) for event in events)
    assert set(boundaries) <= set(frame_ends)  # the relay's own frames only ever go in between frames
    assert scanner.at_boundary


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.binary(max_size=2000), st.lists(st.integers(0, 3000), max_size=6), st.integers(1000, 4999),
       st.text(max_size=40), masks)
def test_a_close_frame_ends_the_direction_and_is_not_forwarded(before, cuts, code, reason, mask):
    data = frame(2, before, mask=mask)
    stream = data + frame(0x8, struct.pack("!H", code) + reason.encode()[:100], mask=mask) + frame(2, b"after")
    forwarded, _, events, _, _ = scan(stream, cuts)
    assert forwarded == data
    assert events[-1][:2] == ("close", code)


def test_a_close_frame_without_a_code():
    assert scan(frame(0x8, b""), [1])[2] == [("close", None, None)]


@pytest.mark.parametrize("stream, code", [
    (frame(2, b"x", rsv=0x40), 1002),  # compressed, but nothing was negotiated
    (frame(0x9, b"p", fin=False), 1002),  # a fragmented control frame
    (b"\x89\x7e\x00\x80" + b"p" * 128, 1002),  # a control frame over 125 bytes
    (frame(0, b"x"), 1002),  # a continuation with nothing to continue
    (frame(1, b"a", fin=False) + frame(1, b"b"), 1002),  # a new message inside a fragmented one
    (frame(0x3, b""), 1002),  # a reserved opcode
    (frame(2, b"y" * 101), 1009),  # over max_message_size
    (frame(2, b"y" * 60, fin=False) + frame(0, b"y" * 60), 1009),  # over it once the fragments are joined
])
def test_protocol_errors_name_the_close_code(stream, code):
    with pytest.raises(ProtocolError) as raised:
        scan(stream, [], max_size=100)
    assert raised.value.code == code


def test_frames_counted_with_their_payload_bytes():
    mask = os.urandom(4)
    stream = frame(2, b"a" * 70000, mask=mask) + frame(0x9, b"ping", mask=mask) + frame(1, b"hello", mask=mask)
    *_, scanner = scan(stream, [3, 70001, 70010])
    assert (scanner.tally.frames, scanner.tally.bytes) == (2, 70005)
