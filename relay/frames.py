"""RFC 6455 frames as a relay needs them: headers read, payloads passed on as they came.

A relay that parses every message (read the header, read the payload, unmask, build a str or bytes, call a handler,
re-frame, mask again, write) spends its time in per-message Python work. Between a browser and HeyGen nothing
needs re-framing: a client's frames stay masked as the browser sent them (a client-to-server frame must be masked,
and any mask will do), HeyGen's pass unmasked. So `FrameScanner` walks the bytes of one direction chunk by chunk,
reads only frame headers, and returns the chunk to forward unchanged. It opens a payload only where the transcript
needs it (`inspect`), and acts on the control frames the relay owns:

- a close frame ends the direction (the relay answers it as tornado would; bytes after it are dropped);
- a pong carrying `PING_MARK` answers the gateway's own keep-alive ping and is not forwarded; every other ping or
  pong passes through, so the two ends keep their own keep-alives;
- a protocol error (reserved bits with no extension negotiated, a fragmented or oversized control frame, a
  continuation with nothing to continue, a message over `max_message_size`) is reported with the close code to send.

A header split across two reads, and a control frame split across two reads, are held back until complete, so
what is forwarded always ends either at a frame boundary or inside a data payload: `at_boundary` says which, and
the relay inserts its own control frames (close, ping) only at a boundary (`boundary` says where the first one in
a forwarded chunk is).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from clients.tornado_compat import websocket_mask

PING_MARK = b"ilianaai-gateway"  # the payload of the gateway's own keep-alive pings
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class ProtocolError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def unmask(mask: bytes, offset: int, data: bytes | memoryview) -> bytes:
    """`data` unmasked, where it starts `offset` bytes into its frame's payload."""
    if not mask:
        return bytes(data)
    shift = offset & 3
    return websocket_mask(mask[shift:] + mask[:shift], bytes(data))


def close_payload(payload: bytes) -> tuple[int | None, str | None]:
    """(code, reason) of a close frame's payload: (None, None) when it has none; reason None when not UTF-8."""
    if len(payload) < 2:
        return None, None
    try:
        return int.from_bytes(payload[:2], "big"), payload[2:].decode()
    except UnicodeDecodeError:
        return int.from_bytes(payload[:2], "big"), None


class FrameScanner:
    """One direction of a relayed WebSocket, read frame header by frame header.

    `inspect(opcode, first_payload_byte) -> bool` chooses the messages whose payload is wanted (unmasked, whole,
    fragments joined); `feed()` returns them. `tally` (observability.metrics.Tally: `frames`, `bytes`) counts the data
    frames and their payload bytes (observability/metrics.py: Tally).
    """
    __slots__ = (
        "_capture",
        "_fin",
        "_held",
        "_left",
        "_mask",
        "_message_opcode",
        "_message_size",
        "_offset",
        "boundary",
        "inspect",
        "max_message_size",
        "tally",
    )

    def __init__(self, inspect: Callable[[int, int | None], bool], max_message_size: int, tally: Any) -> None:
        self.inspect = inspect
        self.max_message_size = max_message_size
        self.tally = tally
        self._held = b""  # an incomplete header or control frame, held back until the rest arrives
        self._left = 0  # payload bytes of the current data frame not yet seen
        self._mask = b""  # that frame's mask ("" when unmasked)
        self._offset = 0  # payload bytes of that frame seen so far
        self._fin = 0  # that frame ends its message (its FIN bit)
        self._message_opcode: int | None = None  # text/binary of a fragmented message under way
        self._message_size = 0
        self._capture: bytearray | None = None  # the inspected message under way
        # where in the last chunk forwarded the first frame boundary is; None: there was none
        self.boundary: int | None = 0

    @property
    def at_boundary(self) -> bool:
        """Whether everything forwarded so far ends at a frame boundary."""
        return self._left == 0

    def feed(self, data: bytes) -> tuple[bytes, list[tuple[int, bytes]] | None, tuple[Any, ...] | None]:
        """Scan one chunk. Returns (forward, messages, event): the bytes to forward (all of `data` unless a frame
        was held back, dropped or ended the direction), the inspected messages completed in this chunk as
        [(opcode, payload)], and None, ("pong",) for the gateway's own pong, or ("close", code, reason). Raises
        ProtocolError."""
        if self._held:
            data = self._held + data
            self._held = b""
        n = len(data)
        pos = 0
        messages = None
        self.boundary = 0
        if self._left:
            pos = min(self._left, n)
            if self._capture is not None:
                self._capture += unmask(self._mask, self._offset, data[:pos])
            self._offset += pos
            self._left -= pos
            if self._left:
                self.boundary = None
                return data, messages, None
            self.boundary = pos
            if self._fin:
                messages = self._end_message(messages)
        tally = self.tally
        kept_from = 0  # start of the bytes not yet cut into `pieces`
        pieces: list[bytes] | None = None  # only when a frame is dropped from the middle
        event: tuple[Any, ...] | None = None
        while pos < n:
            if n - pos < 2:
                break
            b0, b1 = data[pos], data[pos + 1]
            length = b1 & 0x7F
            header = 2
            if length == 126:
                header = 4
                if n - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2:pos + 4], "big")
            elif length == 127:
                header = 10
                if n - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2:pos + 10], "big")
            if b1 & 0x80:
                mask = data[pos + header:pos + header + 4]
                header += 4
            else:
                mask = b""
            start = pos + header
            if start > n or (length and start >= n):  # the header, and one payload byte, not all here yet
                break
            if b0 & 0x70:
                raise ProtocolError(1002, "reserved bits set")
            opcode = b0 & 0x0F
            if opcode & 0x8:
                if length > 125 or not b0 & 0x80:
                    raise ProtocolError(1002, "bad control frame")
                end = start + length
                if end > n:
                    break  # held back whole
                if opcode == OP_CLOSE:
                    code, reason = close_payload(unmask(mask, 0, data[start:end]))
                    event = ("close", code, reason)
                    n = pos  # nothing after a close frame is forwarded
                    break
                if opcode == OP_PONG and length == len(PING_MARK) and unmask(mask, 0, data[start:end]) == PING_MARK:
                    if pieces is None:
                        pieces = []
                    pieces.append(data[kept_from:pos])
                    kept_from = end
                    event = ("pong",)
                elif opcode not in (OP_PING, OP_PONG):
                    raise ProtocolError(1002, "unknown control opcode")
                pos = end
                continue
            # A data frame.
            if opcode == OP_CONTINUATION:
                if self._message_opcode is None:
                    raise ProtocolError(1002, "continuation with nothing to continue")
                size = self._message_size + length
            elif opcode in (OP_TEXT, OP_BINARY):
                if self._message_opcode is not None:
                    raise ProtocolError(1002, "new message inside a fragmented one")
                size = length
                self._message_opcode = opcode
                first = (data[start] ^ mask[0] if mask else data[start]) if length else None
                self._capture = bytearray() if self.inspect(opcode, first) else None
            else:
                raise ProtocolError(1002, "unknown opcode")
            if size > self.max_message_size:
                raise ProtocolError(1009, "message too big")
            self._message_size = size
            tally.frames += 1
            tally.bytes += length
            end = start + length
            fin = b0 & 0x80
            if end > n:  # the payload goes on in the next chunks
                if self._capture is not None:
                    self._capture += unmask(mask, 0, data[start:n])
                self._left, self._mask, self._offset, self._fin = end - n, mask, n - start, fin
                pos = n
                break
            if self._capture is not None and length:
                self._capture += unmask(mask, 0, data[start:end])
            pos = end
            if fin:
                messages = self._end_message(messages)
        if pos < n:
            self._held = bytes(data[pos:n])
        if pieces is None:
            forward = data if pos == len(data) and not self._held else data[:pos]
        else:
            pieces.append(data[kept_from:pos])
            forward = b"".join(pieces)
        return forward, messages, event

    def _end_message(self, messages: list[tuple[int, bytes]] | None) -> list[tuple[int, bytes]] | None:
        if self._capture is not None:
            if messages is None:
                messages = []
            messages.append((self._message_opcode or 0, bytes(self._capture)))
            self._capture = None
        self._message_opcode = None
        self._message_size = 0
        return messages
