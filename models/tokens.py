"""The `gateway_tokens` collection: the server-side records of gateway tokens (domain/tokens.py), found by hash."""
from __future__ import annotations

from typing import Any

from pymongo import ReturnDocument

from domain.records import TokenRecord, from_document
from models.documents import GatewayToken
from models.store import Repository, blocking

CLAIMING = "__claiming__"  # the session_id of a token reserved by a streaming.new under way


class TokenRepository(Repository):
    document = GatewayToken

    @blocking
    def save(self, token_hash: str, customer: str, provider: str, contract: str, upstream_token: str | None,
             config: dict[str, Any], created_at: float, expires_at: float, session_id: str | None = None) -> None:
        record = GatewayToken(token_hash=token_hash, customer=customer, provider=str(provider),
                              contract=str(contract), upstream_token=upstream_token, config=config,
                              session_id=session_id, created_at=created_at, expires_at=expires_at)
        record.validate()
        self.collection.insert_one(record.to_mongo().to_dict())

    @blocking
    def find(self, token_hash: str) -> TokenRecord | None:
        found = self.collection.find_one({"token_hash": token_hash})
        return from_document(TokenRecord, found) if found is not None else None

    @blocking
    def claim(self, customer: str, provider: str, now: float, token_id: Any = None) -> TokenRecord | None:
        """Reserve a minted, unused token for a new session: the one given, else the customer's newest."""
        query: dict[str, Any] = {"customer": customer, "provider": str(provider), "session_id": None,
                                 "expires_at": {"$gt": now}}
        if token_id is not None:
            query["_id"] = token_id
        found = self.collection.find_one_and_update(query, {"$set": {"session_id": CLAIMING}},
                                                    sort=[("created_at", -1)], return_document=ReturnDocument.AFTER)
        return from_document(TokenRecord, found) if found is not None else None

    @blocking
    def bind(self, token_id: Any, session_id: str) -> None:
        self.collection.update_one({"_id": token_id}, {"$set": {"session_id": session_id}})

    @blocking
    def release(self, token_id: Any) -> None:
        self.collection.update_one({"_id": token_id, "session_id": CLAIMING}, {"$set": {"session_id": None}})
