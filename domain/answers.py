"""What a contract's call answers the plugin, decided below the HTTP surface and written by the handler as it is."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Answer:
    """A status and either a JSON body (`body`) or an upstream's JSON body passed on byte for byte (`raw`), and the
    session it is about (for the access log)."""
    status: int
    body: Any = None
    raw: bytes | None = None
    session_id: str | None = None
