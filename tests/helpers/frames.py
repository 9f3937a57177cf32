"""RFC 6455 frames written out by the book, independently of the code under test: `frame` builds one,
`masked_frames` the raw bytes a browser sends (masked client frames)."""
import os
import struct


def frame(opcode, payload, fin=True, mask=None, rsv=0):
    """One RFC 6455 frame, written out by the book (not by the code under test)."""
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    mask_bit = 0x80 if mask is not None else 0
    if len(payload) < 126:
        head += bytes([mask_bit | len(payload)])
    elif len(payload) < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", len(payload))
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", len(payload))
    if mask is None:
        return head + payload
    key = (mask * (len(payload) // 4 + 1))[:len(payload)]
    return head + mask + (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(len(payload), "big")


def masked_frames(*frames):
    """Raw client frames (masked, as a browser sends them) from (opcode, payload, fin) triples, built by `frame`."""
    return b"".join(frame(opcode, payload, fin=fin, mask=os.urandom(4)) for opcode, payload, fin in frames)
