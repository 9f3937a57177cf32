"""The `session_claims` collection: per customer, the sessions being opened (their upstream calls under way), in
the order they were claimed — what the concurrency quota counts besides the live sessions."""
from __future__ import annotations

import secrets

from pymongo.errors import DuplicateKeyError

from domain.errors import ConcurrencyLimitExceeded
from models.documents import AvatarSession, SessionClaims
from models.store import Repository, blocking
from observability import metrics

Claim = tuple[str, str]  # (customer, claim id)


class ClaimRepository(Repository):
    document = SessionClaims

    @blocking
    def claim(self, customer: str, limit: int, now: float, ttl: float) -> Claim:
        """Take one of the customer's `limit` concurrent sessions before the upstream call that opens it; returns the
        claim, to release once the session is recorded (or was not opened). Counted across processes: live sessions
        plus the claims ahead of this one in the customer's line (taken atomically with the claim), so racing starts
        are admitted in order, never over the limit. ConcurrencyLimitExceeded when all are taken; a claim whose
        process died mid-call expires after `ttl` seconds."""
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
        # Counted only as far as the limit needs (a real MongoDB stops its index scan there; SecantusDB reads the
        # customer's whole range of the index, ~3 us a live session, so its cost grows with them).
        room = limit - len(ahead)
        live = self.store.collection(AvatarSession).count_documents({"customer_live": customer},
                                                                    limit=room) if room > 0 else 0
        running = live + len(ahead)
        if running >= limit:
            metrics.QUOTA_REFUSED.inc()
            self._release(customer, claim_id)
            raise ConcurrencyLimitExceeded(f"this customer may run {limit} avatar sessions at once; end one first",
                                           limit=limit, running=running)
        return customer, claim_id

    @blocking
    def release(self, claim: Claim) -> None:
        self._release(*claim)

    def _release(self, customer: str, claim_id: str) -> None:
        self.collection.update_one({"_id": customer}, {"$pull": {"claims": {"id": claim_id}}})
