"""Transcript assembly, pure: turns from several paths merged so each utterance counts once, in spoken order.

A turn (domain/records.py: Turn) is {role, transcript, absolute_timestamp, sources, task_ids}. The same utterance can
reach the gateway by several paths (a repeat task and the avatar's end message for that task; a message the client
reports; the provider's server-side transcript). Two reports are one utterance when they have the same role and either
share a task id, or have the same normalized text, come from different paths and lie within DEDUPE_WINDOW seconds.
The same path reporting the same words twice (a user saying "yes" twice) stays two turns.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from domain.records import Turn

DEDUPE_WINDOW = 120.0

_PUNCTUATION = re.compile(r"[^\w\s]", re.UNICODE)
_SPACES = re.compile(r"\s+")


def normalize(text: str | None) -> str:
    return _SPACES.sub(" ", _PUNCTUATION.sub("", text or "").lower()).strip()


def new_turn(role: str, text: str, at: float, source: str, task_id: str | None = None) -> Turn:
    return {"role": role, "transcript": text.strip(), "absolute_timestamp": float(at),
            "sources": [source], "task_ids": [task_id] if task_id else []}


def _same_utterance(turn: Turn, new: Turn, window: float) -> bool:
    if turn["role"] != new["role"]:
        return False
    if set(turn["task_ids"]) & set(new["task_ids"]):
        return True
    if set(turn["sources"]) & set(new["sources"]):
        return False
    return (normalize(turn["transcript"]) == normalize(new["transcript"])
            and abs(turn["absolute_timestamp"] - new["absolute_timestamp"]) <= window)


def merge_turn(turns: list[Turn], new: Turn, window: float = DEDUPE_WINDOW) -> tuple[list[Turn], bool]:
    """Return (turns with `new` merged in, whether a new utterance was added). `turns` is not modified."""
    merged: list[Turn] = [Turn(**t) for t in turns]
    for turn in merged:
        if _same_utterance(turn, new, window):
            turn["sources"] = sorted(set(turn["sources"]) | set(new["sources"]))
            turn["task_ids"] = sorted(set(turn["task_ids"]) | set(new["task_ids"]))
            turn["absolute_timestamp"] = min(turn["absolute_timestamp"], new["absolute_timestamp"])
            return merged, False
    merged.append(Turn(**new))
    return merged, True


def merge_all(turns: list[Turn], others: Iterable[Turn], window: float = DEDUPE_WINDOW) -> list[Turn]:
    for turn in others:
        turns, _ = merge_turn(turns, turn, window)
    return turns


def spoken_order(turns: Iterable[Turn]) -> list[Turn]:
    return sorted(turns, key=lambda t: t["absolute_timestamp"])  # stable: equal times keep arrival order


def for_petya(turns: Iterable[Turn], with_sources: bool = False) -> list[dict[str, Any]]:
    """The turn format Petya stores, in spoken order: both timestamp names, as the two specs differ (unix seconds).
    with_sources adds the paths that reported each turn (for the session's owner, not for Petya)."""
    out: list[dict[str, Any]] = []
    for t in spoken_order(turns):
        at = round(t["absolute_timestamp"], 3)
        out.append({"role": t["role"], "transcript": t["transcript"], "absolute_timestamp": at, "timestamp": at})
        if with_sources:
            out[-1]["sources"] = t["sources"]
    return out


class ChunkJoiner:
    """Joins streamed chunks (avatar_talking_message / user_talking_message) into utterances per task id.

    feed(event, now) returns a completed turn (new_turn) when an end message closes one, else None.
    """

    __slots__ = ("_open", "source")  # one per relayed socket
    TALKING = {"avatar_talking_message": "avatar", "user_talking_message": "user"}
    ENDING = {"avatar_end_message": "avatar", "user_end_message": "user"}

    def __init__(self, source: str = "socket") -> None:
        self._open: dict[tuple[str, str], dict[str, Any]] = {}  # (role, task_id) -> {"parts": [...], "at": float}
        self.source = source  # the path its turns are reported by

    def feed(self, event: dict[str, Any], now: float) -> Turn | None:
        kind = event.get("type") or event.get("event_type")
        text = event.get("message") if event.get("message") is not None else event.get("text")
        task_id = str(event.get("task_id") or "")
        if kind in self.TALKING:
            entry = self._open.setdefault((self.TALKING[kind], task_id), {"parts": [], "at": now})
            if isinstance(text, str):
                entry["parts"].append(text)
            return None
        if kind in self.ENDING:
            role = self.ENDING[kind]
            entry = self._open.pop((role, task_id), {"parts": [], "at": now})
            spoken = text if isinstance(text, str) and text.strip() else "".join(entry["parts"])
            if spoken.strip():
                return new_turn(role, spoken, entry["at"], self.source, task_id or None)
        return None

    def drain(self) -> list[Turn]:
        """Utterances cut off mid-way (the socket closed): kept, not lost."""
        turns = [new_turn(role, "".join(e["parts"]), e["at"], self.source, task_id or None)
                 for (role, task_id), e in self._open.items() if "".join(e["parts"]).strip()]
        self._open.clear()
        return turns
