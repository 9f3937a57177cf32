"""HeyGen's contract over a LiveAvatar FULL-mode room, pure: the command a HeyGen task becomes, and the HeyGen streaming
events (and turns) each LiveAvatar event becomes (docs/upstream.md#liveavatar-room-events, #heygen-room-data).

LiveAvatar's agent hears JSON commands on the topic `agent-control` and answers on `agent-response`; HeyGen's plugins
read `{"type": ...}` events (on the streaming.chat socket, and as LiveKit data in the room). `Translator` keeps what one
session's translation needs: the utterance under way per role, to fill `avatar_end_message.message` with the whole text
(plugins read the final text there) and to name each event's `task_id` (the command's event id, which is the HeyGen
task id the gateway answered: so a task's turn and the room's report of it share one id and count once).

LiveAvatar has spelled its events several ways; every known spelling is accepted (`EVENT_ALIASES`), unknown types are
ignored quietly.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from domain.records import Turn
from domain.transcript import ChunkJoiner, new_turn

COMMAND_TOPIC = "agent-control"
RESPONSE_TOPIC = "agent-response"
ROOM_SOURCE = "room"  # the turn path of words heard in the room

# Older and client-side spellings -> the current one ("" = known, carries nothing the bridge forwards).
EVENT_ALIASES = {
    "avatar.transcription_chunk": "avatar.transcription.chunk",
    "user.transcription_chunk": "user.transcription.chunk",
    "avatar.transcription_ended": "avatar.transcription",
    "user.transcription_ended": "user.transcription",
    "avatar.transcription_started": "",
    "user.transcription_started": "",
}
# HeyGen task types -> LiveAvatar commands (HeyGen's migration guide: repeat -> speak_text, talk/chat ->
# speak_response); a task without a type is a repeat, as HeyGen's default.
TASK_COMMANDS = {"repeat": "avatar.speak_text", "talk": "avatar.speak_response", "chat": "avatar.speak_response"}
CALL_COMMANDS = {"interrupt": "avatar.interrupt", "start_listening": "avatar.start_listening",
                 "stop_listening": "avatar.stop_listening"}
# HeyGen's streaming.new `quality` -> LiveAvatar's video_settings.quality.
VIDEO_QUALITY = {"high": "high", "medium": "medium", "low": "low"}
MS_PER_WORD = 400  # a spoken word, for a task's duration_ms estimate (HeyGen answers one before speaking)


def command(event_type: str, text: str | None = None, event_id: str | None = None) -> dict[str, Any]:
    """An `agent-control` command, as LiveAvatar's web SDK sends them: `{event_id, event_type[, text]}`."""
    out: dict[str, Any] = {"event_id": event_id or str(uuid.uuid4()), "event_type": event_type}
    if text is not None:
        out["text"] = text
    return out


def task_command(task_type: str | None, text: str) -> dict[str, Any]:
    return command(TASK_COMMANDS.get(task_type or "repeat", "avatar.speak_text"), text)


def estimated_duration_ms(text: str) -> int:
    return max(1, len(text.split())) * MS_PER_WORD


def read_event(payload: bytes) -> dict[str, Any] | None:
    """A LiveAvatar event from a data packet (None when it is not one), its type in the current spelling."""
    try:
        event = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("event_type"), str):
        return None
    kind = EVENT_ALIASES.get(event["event_type"], event["event_type"])
    return {**event, "event_type": kind}


def text_of(event: dict[str, Any]) -> str:
    text = event.get("text")
    return text if isinstance(text, str) else ""


def joined(parts: list[str]) -> str:
    """Chunks into one text: LiveAvatar's chunks are words; HeyGen's carry their own spaces."""
    out = ""
    for part in parts:
        if out and part and not out[-1].isspace() and not part[0].isspace():
            out += " "
        out += part
    return out


@dataclass(slots=True)
class Utterance:
    task_id: str
    at: float
    parts: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Translation:
    """What one LiveAvatar event becomes: HeyGen events to send, a turn to record, and the session's end if it said
    so (`stopped`: LiveAvatar's stop_reason, lower-cased)."""
    events: tuple[dict[str, Any], ...] = ()
    turn: Turn | None = None
    speech_ended: str | None = None  # the command whose utterance ended (a sync task waits for it)
    stopped: str | None = None


NOTHING = Translation()


class Translator:
    """One session's LiveAvatar events -> HeyGen events and turns."""

    __slots__ = ("current", "last_command")

    def __init__(self) -> None:
        self.current: dict[str, Utterance] = {}  # role -> the utterance under way
        self.last_command: str = ""  # the latest command's id: the task id of events that name none

    def _utterance(self, role: str, event: dict[str, Any], now: float) -> Utterance:
        task_id = str(event.get("source_event_id") or self.last_command or event.get("event_id") or "")
        utterance = self.current.get(role)
        if utterance is None or (event.get("source_event_id") and utterance.task_id != task_id):
            utterance = self.current[role] = Utterance(task_id, now)
        return utterance

    def _end(self, role: str, event: dict[str, Any], now: float) -> tuple[str, str, float]:
        """(task id, whole text, when it began) of the role's utterance that `event` ends."""
        utterance = self.current.get(role) or self._utterance(role, event, now)
        del self.current[role]
        text = text_of(event).strip() or joined(utterance.parts).strip()
        return utterance.task_id, text, utterance.at

    def translate(self, event: dict[str, Any], now: float) -> Translation:
        kind = event["event_type"]
        if kind == "avatar.speak_started":
            utterance = self._utterance("avatar", event, now)
            return Translation(({"type": "avatar_start_talking", "task_id": utterance.task_id},))
        if kind == "avatar.transcription.chunk":
            utterance = self._utterance("avatar", event, now)
            text = text_of(event)
            message = text if not utterance.parts or text[:1].isspace() else " " + text
            utterance.parts.append(text)
            return Translation(({"type": "avatar_talking_message", "task_id": utterance.task_id,
                                 "message": message},))
        if kind == "avatar.transcription":
            task_id, text, at = self._end("avatar", event, now)
            # the utterance stays open for avatar.speak_ended, which names the same task
            self.current["avatar"] = Utterance(task_id, at, [text])
            turn = new_turn("avatar", text, at, ROOM_SOURCE, task_id or None) if text else None
            return Translation(({"type": "avatar_end_message", "task_id": task_id, "message": text},), turn)
        if kind == "avatar.speak_ended":
            utterance = self.current.get("avatar") or self._utterance("avatar", event, now)
            del self.current["avatar"]
            return Translation(({"type": "avatar_stop_talking", "task_id": utterance.task_id},),
                               speech_ended=str(event.get("source_event_id") or utterance.task_id))
        if kind == "user.speak_started":
            return Translation(({"type": "user_start"},))
        if kind == "user.speak_ended":
            return Translation(({"type": "user_stop"},))
        if kind == "user.transcription.chunk":
            utterance = self._utterance("user", event, now)
            utterance.parts.append(text_of(event))
            return Translation(({"type": "user_talking_message", "task_id": utterance.task_id,
                                 "message": text_of(event)},))
        if kind == "user.transcription":
            task_id, text, at = self._end("user", event, now)
            turn = new_turn("user", text, at, ROOM_SOURCE, task_id or None) if text else None
            return Translation(({"type": "user_end_message", "task_id": task_id, "message": text},), turn)
        if kind == "session.stopped":
            reason = event.get("stop_reason") or event.get("end_reason") or "unknown"
            return Translation(stopped=str(reason).lower())
        return NOTHING


class HeyGenRoomWords:
    """The words in a HeyGen v2 room: the avatar's and user's events, as LiveKit data from `heygen`
    (`{"type": ...}`), joined into turns (docs/upstream.md#heygen-room-data)."""

    __slots__ = ("joiner",)

    def __init__(self) -> None:
        self.joiner = ChunkJoiner(ROOM_SOURCE)

    def hear(self, payload: bytes, now: float) -> Turn | None:
        try:
            event = json.loads(payload)
        except ValueError:
            return None
        return self.joiner.feed(event, now) if isinstance(event, dict) else None
