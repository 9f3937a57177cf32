"""Usage, for operators and for Petya's billing: per account (its Petya `accountId`, else the gateway's customer id),
per provider, the sessions alive at some time in a window, the seconds the providers served them within it, and the
credits that is estimated to cost (domain/usage.py). A session still live is counted up to now."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from domain.usage import estimated_credits
from models.sessions import SessionRepository


def overlap(start: float, end: float, window_start: float, window_end: float) -> float:
    return max(0.0, min(end, window_end) - max(start, window_start))


class Usage:
    def __init__(self, sessions: SessionRepository, clock: Callable[[], float]) -> None:
        self.sessions = sessions
        self.clock = clock

    async def report(self, start: float, end: float, account: str | None = None) -> dict[str, Any]:
        now = self.clock()
        accounts: dict[str, dict[str, dict[str, Any]]] = {}  # account -> provider -> totals
        for row in await self.sessions.usage(start, end, account):
            totals = accounts.setdefault(row.get("account_id") or row["customer"], {}).setdefault(
                row["provider"], {"sessions": 0, "seconds": 0.0})
            totals["sessions"] += 1
            if row.get("started_at") is not None:
                totals["seconds"] += overlap(row["started_at"], row.get("ended_at") or now, start, min(end, now))
        rows = []
        for name, providers in sorted(accounts.items()):
            by_provider = {provider: {"sessions": t["sessions"], "seconds": round(t["seconds"], 3),
                                      "estimatedCredits": estimated_credits(provider, t["seconds"])}
                           for provider, t in sorted(providers.items())}
            rows.append({"accountId": name, "providers": by_provider,
                         "sessions": sum(t["sessions"] for t in by_provider.values()),
                         "seconds": round(sum(t["seconds"] for t in by_provider.values()), 3)})
        return {"from": start, "to": end, "accounts": rows}
