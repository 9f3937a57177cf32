"""Petya, our main backend: the customer's avatar config (cached) and the conversation-status hand-off."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient

from clients.http import Upstream
from domain.cache import TTLCache
from domain.errors import RETRY_AFTER, ServiceUnavailable, Unauthorized, UpstreamTimeout, UpstreamUnavailable

log = logging.getLogger("gateway.petya")

CONFIG_FIELDS = ("avatarId", "intro", "knowledgeBaseId", "voiceId", "language")
# The hand-off's `call` label in the upstream latency histogram (conversation ids are the customer's: any text).
STATUS_CALL = "POST /api/v1/avatar/conversations/:id/status"


@dataclass
class FlushOutcome:
    """What Petya made of a status hand-off: delivered, retry later (down / 5xx), or rejected for good (4xx)."""
    delivered: bool
    retry: bool
    error: str = ""


class PetyaClient:
    def __init__(self, http: AsyncHTTPClient, base_url: str, auth_token: str, config_ttl: float) -> None:
        self.upstream = Upstream(http, base_url, "Petya")
        self.auth_token = auth_token
        self.cache: TTLCache[str, dict[str, Any]] = TTLCache(config_ttl)
        self._inflight: dict[str, asyncio.Future[dict[str, Any]]] = {}  # customer id -> one Petya lookup at a time

    async def get_config(self, api_key: str, customer_id: str) -> dict[str, Any]:
        """The customer's avatar config; Unauthorized when Petya does not know the key."""
        cached = self.cache.get(customer_id)
        if cached is not None:
            return cached
        pending = self._inflight.get(customer_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._inflight[customer_id] = future
        try:
            config = await self._fetch_config(api_key)
            self.cache.set(customer_id, config)
            future.set_result(config)
            return config
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # a lone caller: mark retrieved so asyncio does not warn
            raise
        finally:
            del self._inflight[customer_id]

    async def _fetch_config(self, api_key: str) -> dict[str, Any]:
        try:
            response = await self.upstream.call("GET", "/api/v1/avatar/config", headers={"X-Api-Key": api_key})
        except UpstreamUnavailable:
            raise ServiceUnavailable("customer configuration service (Petya) is unreachable",
                                     retry_after=RETRY_AFTER) from None
        except UpstreamTimeout:
            raise UpstreamTimeout("customer configuration service (Petya) did not answer in time") from None
        if response.status in (401, 403):
            raise Unauthorized("invalid API key")
        body = response.json()
        if not response.ok or not isinstance(body, dict):
            log.warning("Petya config lookup answered %s", response.status)
            raise UpstreamUnavailable(f"customer configuration service (Petya) answered {response.status}")
        config = {field: body.get(field) for field in CONFIG_FIELDS}
        config.update({k: v for k, v in body.items() if k not in config})
        return config

    async def post_status(self, conversation_id: str, session_id: str, transcript: list[dict[str, Any]],
                          delivery_id: str, status: str = "completed", note: str | None = None,
                          fields: dict[str, Any] | None = None) -> FlushOutcome:
        """Hand a finished session's transcript to Petya (updateConversationStatus). `delivery_id` is the same on
        every attempt (header Idempotency-Key and body deliveryId): Petya applies a repeat of it as a no-op. `note`
        (body transcriptNote, only when there is one) says what the transcript may lack, and why; `fields` are the
        session's usage (domain/usage.py: provider, contract, startedAt, endedAt, durationSeconds, endReason,
        accountId)."""
        path = f"/api/v1/avatar/conversations/{quote(conversation_id, safe='')}/status"
        body: dict[str, Any] = {"sessionId": session_id, "status": status, "transcript": transcript,
                                "deliveryId": delivery_id, **(fields or {})}
        if note:
            body["transcriptNote"] = note
        headers = {"Authorization": f"Bearer {self.auth_token}", "Idempotency-Key": delivery_id}
        try:
            response = await self.upstream.call("POST", path, headers=headers, body=body, call=STATUS_CALL)
        except (UpstreamUnavailable, UpstreamTimeout) as exc:
            return FlushOutcome(delivered=False, retry=True, error=exc.message)
        if response.ok:
            return FlushOutcome(delivered=True, retry=False)
        detail = response.body[:300].decode("utf-8", "replace")
        error = f"Petya answered {response.status}: {detail}"
        return FlushOutcome(delivered=False, retry=response.status >= 500 or response.status == 429, error=error)
