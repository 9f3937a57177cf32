"""LiveKit rooms as the official Python `livekit` rtc SDK sees them: `until`, the wait for a (synchronous)
condition on what a room saw; LiveAvatarRoom, a room joined with LiveAvatar's client token that sends agent-control
commands and keeps the agent-response events it receives."""
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
