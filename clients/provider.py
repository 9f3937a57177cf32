"""What a provider is: who serves a session upstream (HeyGen, LiveAvatar). The services drive every provider
through this one interface; each provider's client implements it (clients/heygen.py, clients/liveavatar.py), and the
application holds one of each, by name (handlers/app.py)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from clients.http import UpstreamResponse
from domain.names import ProviderName
from domain.records import Session, Turn


class Provider(Protocol):
    """What the lifecycle needs of any provider, whatever the contract: how its sessions stop, where their transcript
    comes from, how its errors read. How a session starts and is kept alive is the contract's business (the servers
    in services/heygen_contract.py and services/liveavatar_contract.py)."""
    name: ProviderName
    label: str  # how messages name it: "HeyGen"

    async def stop_session(self, session: Session, reason: str) -> UpstreamResponse:
        """Stop it, for the gateway's `reason` (stopped, socket_closed, idle, max_age)."""
        ...

    async def abandon(self, session_id: str) -> UpstreamResponse:
        """Stop a session the gateway could not record."""
        ...

    def is_concurrency_error(self, response: UpstreamResponse) -> bool:
        """Whether an answer says our account's concurrent sessions are all in use."""
        ...

    async def erase(self, session_id: str) -> UpstreamResponse | None:
        """Ask the provider to delete what it keeps of the session's words; None when there is no way to ask."""
        ...

    async def final_turns(self, session: Session, recorded: list[Turn]) -> tuple[list[Turn], str | None]:
        """The session's whole transcript for the hand-off: `recorded` (what the gateway saw) merged with what the
        provider keeps, if it keeps any; and a note when its part could not be had."""
        ...


Providers = Mapping[ProviderName, Provider]


def says_concurrent(response: UpstreamResponse) -> bool:
    """The words both providers use, as far as is known (UNVERIFIED: docs/upstream.md#heygen-concurrency), when our
    account's concurrent sessions are all in use: a 400 or 429 whose message speaks of concurrent sessions."""
    body = response.json()
    return (response.status in (400, 429) and isinstance(body, dict)
            and "concurrent" in str(body.get("message", "")).lower())
