"""The relays a gateway holds open, owned by its application object (handlers/app.py)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from domain.errors import ServiceUnavailable
from services.sessions import Sessions

if TYPE_CHECKING:
    from relay.handler import StreamingChatRelay


class OpenRelays:
    """Closed with 1001 (going away) on shutdown; recorded under a new lease when this process's lease was lost (a
    services.leases.LeaseFollower). Bounded by the sockets the process holds."""

    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions
        self._relays: set[StreamingChatRelay] = set()

    def add(self, relay: StreamingChatRelay) -> None:
        self._relays.add(relay)

    def discard(self, relay: StreamingChatRelay) -> bool:
        """Forget a relay: True when it was open."""
        if relay in self._relays:
            self._relays.discard(relay)
            return True
        return False

    def __contains__(self, relay: object) -> bool:
        return relay in self._relays

    def __iter__(self) -> Iterator[StreamingChatRelay]:
        return iter(list(self._relays))

    def __len__(self) -> int:
        return len(self._relays)

    def close_all(self, reason: str) -> None:
        """Close every open relay with 1001 (going away): their clients reconnect, here or elsewhere."""
        for relay in list(self._relays):
            relay.close(1001, reason)

    async def lease_moved(self, process_id: str) -> None:
        """Record the open sockets under this process's new lease `process_id`; a socket that cannot be moved now is
        closed with 1001, and its client reconnects."""
        while left := [r for r in self._relays if r.process_id != process_id]:
            for relay in left:  # again until none is left: sockets may open meanwhile, under the old lease
                assert relay.session is not None and relay.socket_id is not None
                try:
                    await self.sessions.socket_moved(relay.session.session_id, relay.socket_id, process_id)
                    relay.process_id = process_id
                except ServiceUnavailable:
                    relay.process_id = process_id  # not to be tried again: it goes
                    relay.close(1001, "reconnect: gateway lease renewed")
