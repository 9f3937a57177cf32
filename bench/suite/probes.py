"""WebSocket probes: frames carrying a sequence number and a perf_counter() send time, and the places they arrive
(the emulator's record of received frames, or a client's reader). Sender and receiver are both in this process, so
they share one clock."""
import asyncio
import json
import struct
import time

from tornado.websocket import WebSocketClosedError

MAGIC = b"BNCH"
HEADER = struct.Struct("<4sId")


def binary_probe(seq, size):
    frame = HEADER.pack(MAGIC, seq, time.perf_counter())
    return frame + bytes(max(0, size - len(frame)))


def text_probe_up(seq, pad):
    return json.dumps({"type": "bench_probe", "bench_seq": seq, "bench_t": time.perf_counter(), "pad": pad})


def text_event_down(seq, task_id):
    """A HeyGen avatar_talking_message event (what the relay parses for the transcript) carrying the probe."""
    return {"type": "avatar_talking_message", "task_id": task_id, "message": " w",
            "bench_seq": seq, "bench_t": time.perf_counter()}


def decode_probe(message):
    """(seq, sent_at) of a probe frame, or None for any other frame."""
    if isinstance(message, (bytes, bytearray)):
        if message[:4] == MAGIC and len(message) >= HEADER.size:
            _, seq, sent = HEADER.unpack_from(message)
            return seq, sent
        return None
    if "bench_seq" in message:
        event = json.loads(message)
        return event["bench_seq"], event["bench_t"]
    return None


class ProbeSink:
    """Where probes arrive (the emulator's record of received frames, or the client's reader)."""

    def __init__(self):
        self.waiters = {}
        self.latencies = []
        self.recording = False
        self.count = 0
        self.target = None
        self.done = None
        self.other = 0  # frames that were not probes (e.g. the emulator's user_start/user_stop)

    def arrive(self, seq, sent, now):
        if self.recording:
            self.latencies.append(now - sent)
        self.count += 1
        waiter = self.waiters.pop(seq, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(now)
        if self.done is not None and self.count >= self.target and not self.done.done():
            self.done.set_result(now)


class ProbeList(list):
    """Replaces an emulated session's `ws_received` list: the emulator's StreamingChatSocket.on_message appends
    (is_binary, payload) for every frame it receives; probes are timed here and not stored (bounded memory)."""

    def __init__(self, sink):
        super().__init__()
        self.sink = sink

    def append(self, item):
        now = time.perf_counter()
        probe = decode_probe(item[1])
        if probe is None:
            super().append(item)
        else:
            self.sink.arrive(probe[0], probe[1], now)


class EchoList(list):
    """Replaces an emulated session's `ws_received` list for the echo row: every frame the emulator receives is
    written straight back on the session's socket (HeyGen itself does not echo) and not kept."""

    def __init__(self, session):
        super().__init__()
        self.session = session

    def append(self, item):
        is_binary, payload = item
        for sock in self.session.sockets:
            try:
                sock.write_message(payload, binary=is_binary)
            except WebSocketClosedError:
                pass


class ClientPeer:
    """A client WebSocket whose incoming frames are read continuously; probes go to `sink`."""

    def __init__(self, ws, sink):
        self.ws = ws
        self.sink = sink
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self):
        while True:
            message = await self.ws.read_message()
            if message is None:
                return
            now = time.perf_counter()
            probe = decode_probe(message)
            if probe is None:
                self.sink.other += 1
            else:
                self.sink.arrive(probe[0], probe[1], now)

    async def close(self):
        self.ws.close()
        try:
            await asyncio.wait_for(self.reader, 5)
        except TimeoutError:
            self.reader.cancel()
