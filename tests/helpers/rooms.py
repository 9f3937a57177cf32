"""LiveKit rooms as the official Python `livekit` rtc SDK sees them: `until`, the wait for a (synchronous)
condition on what a room saw; LiveAvatarRoom, a room joined with LiveAvatar's client token that sends agent-control
commands and keeps the agent-response events it receives; SdkRoom, a room with what it saw; first_video_frames."""
import asyncio
import json
import time

from livekit import rtc


async def until(check, timeout=10, what=""):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {timeout}s: {what}")
        await asyncio.sleep(0.02)


class LiveAvatarRoom:
    """A Python SDK room with the agent-response events it received."""

    def __init__(self):
        self.room = rtc.Room()
        self.events = []  # (sender identity, event)
        self.room.on("data_received", self.on_data)

    def on_data(self, packet):
        if packet.topic == "agent-response":
            self.events.append((packet.participant.identity if packet.participant else None,
                                json.loads(packet.data)))

    async def connect(self, url, token):
        await self.room.connect(url, token)
        return self

    def types(self, *wanted):
        return [(e["event_type"], e.get("text")) for _, e in self.events if not wanted or e["event_type"] in wanted]

    async def command(self, event_type, **fields):
        event = {"event_id": f"cmd-{len(self.events)}-{time.monotonic()}", "event_type": event_type, **fields}
        await self.room.local_participant.publish_data(json.dumps(event).encode(), topic="agent-control",
                                                       reliable=True)
        return event["event_id"]


class SdkRoom:
    """A Python SDK room with what it saw: data packets, joins and leaves."""

    def __init__(self):
        self.room = rtc.Room()
        self.data = []  # (sender identity, topic, payload, kind)
        self.joined, self.left = [], []
        self.room.on("data_received", lambda p: self.data.append(
            (p.participant.identity if p.participant else None, p.topic, p.data, p.kind)))
        self.room.on("participant_connected", lambda p: self.joined.append(p.identity))
        self.room.on("participant_disconnected", lambda p: self.left.append(p.identity))

    async def connect(self, server, room, identity):
        await self.room.connect(server.url, server.token(room, identity, name=identity.title()))
        return self


async def first_video_frames(track, count):
    """The first `count` frames the SDK decodes from a remote video track."""
    stream, frames = rtc.VideoStream(track), []
    try:
        async for event in stream:
            frames.append(event.frame)
            if len(frames) == count:
                return frames
    finally:
        await stream.aclose()
