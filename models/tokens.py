"""The `gateway_tokens` collection: the server-side records of gateway tokens (domain/tokens.py), found by hash."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from domain.records import TokenRecord, from_document
from models.documents import GatewayToken
from models.store import Repository, blocking, essential

CLAIMING = "__claiming__"  # the session_id of a token reserved by a streaming.new under way
CLAIM_TRIES = 5  # tokens tried before giving up, when racing calls take the newest ones


class TokenRepository(Repository):
    document = GatewayToken

    @blocking
    def save(self, token_hash: str, customer: str, provider: str, contract: str, upstream_token: str | None,
             config: dict[str, Any], created_at: float, expires_at: float, session_id: str | None = None) -> None:
        record = GatewayToken(token_hash=token_hash, customer=customer, provider=str(provider),
                              contract=str(contract), upstream_token=upstream_token, config=config,
                              session_id=session_id, customer_unbound=None if session_id else customer,
                              created_at=created_at, expires_at=expires_at,
                              expire_at=datetime.fromtimestamp(expires_at, UTC))
        record.validate()
        self.collection.insert_one(record.to_mongo().to_dict())

    @blocking
    def find(self, token_hash: str) -> TokenRecord | None:
        found = self.collection.find_one({"token_hash": token_hash})
        return from_document(TokenRecord, found) if found is not None else None

    @blocking
    def claim(self, customer: str, provider: str, now: float, token_id: Any = None) -> TokenRecord | None:
        """Reserve a minted, unused token for a new session: the one given, else the customer's newest. Each try is
        one conditional update by _id (the conditions inside it), so of two racing calls one reserves a token. The
        customer's unused tokens are found by one field, `customer_unbound` (a findAndModify, or a filter with more
        predicates, is a collection scan for SecantusDB); expired ones are deleted by the TTL index."""
        if token_id is not None:
            candidates = [token_id]
        else:
            found = self.collection.find({"customer_unbound": customer},
                                         {"_id": 1, "provider": 1, "session_id": 1, "expires_at": 1, "created_at": 1})
            candidates = [t["_id"] for t in sorted(found, key=lambda t: t.get("created_at", 0), reverse=True)
                          if t.get("provider") == str(provider) and t.get("session_id") is None
                          and t.get("expires_at", 0) > now]
        free = {"$and": [{"$eq": [{"$ifNull": ["$session_id", None]}, None]}, {"$eq": ["$customer", customer]},
                         {"$eq": ["$provider", str(provider)]}, {"$gt": ["$expires_at", now]}]}
        for candidate in candidates[:CLAIM_TRIES]:
            if self.collection.update_one({"_id": candidate}, [{"$set": {
                    "session_id": {"$cond": [free, CLAIMING, "$session_id"]}}}]).modified_count:
                found_one = self.collection.find_one({"_id": candidate})
                return from_document(TokenRecord, found_one) if found_one is not None else None
        return None

    @essential  # after the provider acted: not refused for a busy queue
    def bind(self, token_id: Any, session_id: str) -> None:
        self.collection.update_one({"_id": token_id}, {"$set": {"session_id": session_id, "customer_unbound": None}})

    @blocking
    def release(self, token_id: Any) -> None:
        self.collection.update_one({"_id": token_id}, [{"$set": {"session_id": {
            "$cond": [{"$eq": ["$session_id", CLAIMING]}, None, "$session_id"]}}}])
