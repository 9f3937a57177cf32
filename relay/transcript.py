"""The words a relayed socket carries, queued as turns: the user's (the SDK's speak(): a pipecat TextFrame from the
client) and HeyGen's transcript events (v1-style JSON from upstream), whichever pump moves the frames."""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from domain.records import Turn
from domain.transcript import ChunkJoiner, new_turn
from relay.frames import OP_BINARY, OP_TEXT
from relay.pipecat import TEXT_TAG, text_of
from services.turns import TurnQueue

Inspected = list[tuple[int, bytes]]  # (opcode, payload) of whole messages


def wanted_from_client(opcode: int, first_byte: int | None) -> bool:
    """The client's messages worth opening: binary pipecat TextFrames (audio, the rest, passes unread)."""
    return opcode == OP_BINARY and first_byte == TEXT_TAG


def wanted_from_upstream(opcode: int, first_byte: int | None) -> bool:
    """HeyGen's messages worth opening: its JSON events."""
    return opcode == OP_TEXT


def never(opcode: int, first_byte: int | None) -> bool:
    """No message is worth opening (a leg whose words are recorded elsewhere)."""
    return False


class SocketTranscript:
    __slots__ = ("clock", "hears_upstream", "joiner", "session_id", "turns")  # one per relayed socket

    def __init__(self, session_id: str, turns: TurnQueue, clock: Callable[[], float],
                 hears_upstream: bool = True) -> None:
        self.session_id = session_id
        self.hears_upstream = hears_upstream  # False: the upstream's words are recorded elsewhere
        self.turns = turns
        self.clock = clock
        self.joiner = ChunkJoiner()

    def from_client(self, messages: Inspected) -> Awaitable[None] | None:
        """The words of the SDK's speak() (a pipecat TextFrame), queued as user turns (see queue)."""
        turns = [new_turn("user", text, self.clock(), "frame")
                 for _, payload in messages if (text := text_of(payload)) and text.strip()]
        return self.queue(turns) if turns else None

    def from_upstream(self, messages: Inspected) -> Awaitable[None] | None:
        """The turns HeyGen's transcript events complete, queued (see queue)."""
        if not self.hears_upstream:
            return None
        turns = []
        for _, payload in messages:
            try:
                event = json.loads(payload)
            except ValueError:  # not JSON, or not UTF-8
                continue
            if isinstance(event, dict) and (turn := self.joiner.feed(event, self.clock())):
                turns.append(turn)
        return self.queue(turns) if turns else None

    def queue(self, turns: list[Turn]) -> Awaitable[None] | None:
        """Each turn into the queue: None when all went in at once; else an awaitable that queues the rest as room
        comes (the turn queue is full: the leg stops reading meanwhile, backpressure on its sender)."""
        for i, turn in enumerate(turns):
            if not self.turns.put_nowait(self.session_id, turn):
                return self._queue_as_room_comes(turns[i:])
        return None

    async def _queue_as_room_comes(self, turns: list[Turn]) -> None:
        for turn in turns:
            await self.turns.put(self.session_id, turn)

    def drain(self) -> list[Turn]:
        """Utterances cut off mid-way (the socket closed): kept, not lost."""
        return self.joiner.drain()
