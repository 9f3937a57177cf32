"""The `session_claims` collection: per customer, the sessions being opened (their upstream calls under way), in
the order they were claimed — what the concurrency quota counts besides the live sessions — and `opened`, how many
sessions of the customer have been opened (recorded) so far, which lets a process bound the live count without
counting it on every start (ClaimRepository.claim)."""
from __future__ import annotations

import secrets
import threading
from typing import Any

from pymongo.errors import DuplicateKeyError

from domain.errors import ConcurrencyLimitExceeded
from models.documents import AvatarSession, SessionClaims
from models.store import Repository, blocking
from observability import metrics

Claim = tuple[str, str]  # (customer, claim id)

# An exact count of a customer's live sessions is reused this long (seconds): within it, sessions ended meanwhile are
# still counted (the bound is high, never low) until the next count.
LIVE_COUNT_FRESH = 5.0
LIVE_COUNTS_KEPT = 10_000  # customers whose last count a process keeps (the oldest is dropped at the bound)


class ClaimRepository(Repository):
    document = SessionClaims

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # customer -> (live count, the customer's `opened` read before that count, when): LiveCount's inputs
        self._counts: dict[str, tuple[int, int, float]] = {}
        self._counts_lock = threading.Lock()  # claims run on the store's threads

    @blocking
    def claim(self, customer: str, limit: int, now: float, ttl: float) -> Claim:
        """Take one of the customer's `limit` concurrent sessions before the upstream call that opens it; returns the
        claim, to release once the session is recorded (or was not opened). Counted across processes: live sessions
        plus the claims ahead of this one in the customer's line (taken atomically with the claim), so racing starts
        are admitted in order, never over the limit. ConcurrencyLimitExceeded when all are taken; a claim whose
        process died mid-call expires after `ttl` seconds.

        The live sessions are not counted on every claim: counting them reads the customer's whole range of the
        `customer_live` index on SecantusDB (~3 us a session: 30 ms a start for a customer with 10,000 live), and
        with 500 starts at once that queued every other MongoDB call behind it. A count is kept LIVE_COUNT_FRESH
        seconds with the customer's `opened` read just before it; then the live sessions are at most that count plus
        the sessions opened since (`opened` now minus then: each release of a claim whose session was recorded adds
        one, in the same write that takes the claim out of the line). A session counted twice, or one ended
        meanwhile, only makes the bound higher. So a start is admitted without counting while that bound plus the
        claims ahead is under the limit, and counted afresh otherwise (near the limit, the count is exact)."""
        claim_id, collection = secrets.token_hex(8), self.collection
        while True:
            # By _id alone, then read back by _id: a findAndModify is a collection scan for SecantusDB.
            if collection.update_one({"_id": customer},
                                     {"$push": {"claims": {"id": claim_id, "expires_at": now + ttl}}}).matched_count:
                line = collection.find_one({"_id": customer}) or {"claims": []}
                claims = line["claims"]
                mine = next((i for i, c in enumerate(claims) if c["id"] == claim_id), len(claims) - 1)
                claims = claims[:mine + 1]  # the line as far as this claim: claims pushed after it are behind
                break
            try:  # the customer's first claim: its line starts now (racing first claims: one insert wins)
                collection.insert_one({"_id": customer, "claims": []})
            except DuplicateKeyError:
                pass
        ahead = [c for c in claims[:-1] if c["expires_at"] > now]
        if len(ahead) < len(claims) - 1:  # claims of processes that died mid-call: drop them
            collection.update_one({"_id": customer}, {"$pull": {"claims": {"expires_at": {"$lte": now}}}})
        room = limit - len(ahead)
        opened = int(line.get("opened") or 0)
        live = self._live_bound(customer, opened, now)
        if live is None or live >= room:
            live = self._count_live(customer, room, opened, now) if room > 0 else 0
        running = live + len(ahead)
        if running >= limit:
            metrics.QUOTA_REFUSED.inc()
            self._release(customer, claim_id)
            raise ConcurrencyLimitExceeded(f"this customer may run {limit} avatar sessions at once; end one first",
                                           limit=limit, running=running)
        return customer, claim_id

    def _live_bound(self, customer: str, opened: int, now: float) -> int | None:
        """At least the customer's live sessions, from its last count if fresh (see claim); None without one."""
        kept = self._counts.get(customer)
        if kept is None or now - kept[2] > LIVE_COUNT_FRESH:
            return None
        count, opened_then, _ = kept
        return count + max(0, opened - opened_then)

    def _count_live(self, customer: str, room: int, opened: int, now: float) -> int:
        """The customer's live sessions, counted only as far as `room` needs (a real MongoDB stops its index scan
        there); kept for _live_bound when the count is exact (under `room`). `opened` was read before counting."""
        live = self.store.collection(AvatarSession).count_documents({"customer_live": customer}, limit=room)
        if live < room:
            with self._counts_lock:
                self._counts.pop(customer, None)
                self._counts[customer] = (live, opened, now)
                while len(self._counts) > LIVE_COUNTS_KEPT:
                    del self._counts[next(iter(self._counts))]
        return live

    @blocking
    def release(self, claim: Claim, opened: bool = False) -> None:
        """Take the claim out of the customer's line; `opened`: its session was recorded, counted in `opened` in the
        same write (so no moment counts it neither as a claim nor as opened)."""
        self._release(*claim, opened=opened)

    def _release(self, customer: str, claim_id: str, opened: bool = False) -> None:
        update: dict[str, Any] = {"$pull": {"claims": {"id": claim_id}}}
        if opened:
            update["$inc"] = {"opened": 1}
        self.collection.update_one({"_id": customer}, update)
