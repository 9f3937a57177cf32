"""LiveAvatar routes: the plugin, or LiveAvatar's own web SDK given the gateway as its `apiUrl`, runs sessions
without ever holding our key or LiveAvatar's session token."""
from handlers.base import BaseHandler
from handlers.schemas import OPTIONAL_SESSION_REF, TOKEN_REQUEST
from models.errors import BadRequest, ConcurrencyLimitExceeded, Unauthorized, UpstreamUnavailable

# Tokens the browser has no use for: LiveAvatar's agent token lets its holder join the room as the avatar's agent.
SERVER_SIDE_FIELDS = ("livekit_agent_token",)


class SessionTokenHandler(BaseHandler):
    """Mints LiveAvatar's session with the customer's config; the browser gets our token in place of LiveAvatar's.
    The session is recorded now, so one minted and never started is still found and stopped."""

    async def post(self):
        customer = await self.authenticate(allow_token=False)
        request = self.load_body(TOKEN_REQUEST)
        async with self.session_slot(customer):  # the customer's quota, before LiveAvatar is called
            await self.open_session(customer, request)

    async def open_session(self, customer, request):
        liveavatar = self.gateway.liveavatar
        response = await liveavatar.create_token(customer.config)
        body = response.json()
        data = body.get("data") if response.ok and isinstance(body, dict) else None
        if not isinstance(data, dict) or not data.get("session_id") or not data.get("session_token"):
            if response.ok:
                raise UpstreamUnavailable("LiveAvatar answered without a session")
            return self.pass_through(response)
        session_id = data["session_id"]
        token = self.gateway.tokens.mint("liveavatar", self.gateway.settings.token_ttl, data["session_token"])
        self.log_session_id = session_id
        await self.record_new_session(
            liveavatar, session_id, conversation_id=request.get("conversation_id"), customer=customer.id,
            upstream_token=data["session_token"])
        await self.gateway.sessions.save_token(token, customer.id, "liveavatar", data["session_token"],
                                               customer.config, self.gateway.settings.token_ttl, session_id)
        data["session_token"] = token
        self.send_json(body)


class LiveAvatarSessionHandler(BaseHandler):
    async def liveavatar_session(self, customer, request=None, facts=False):
        """The session named by the body's session_id, or else by the Bearer token; NotFound unless it is this
        customer's LiveAvatar session."""
        session_id = (request or {}).get("session_id") or (customer.token.session_id if customer.token else None)
        if not session_id:
            raise BadRequest("invalid field: session_id", errors={"session_id": ["required without a session token"]})
        return await self.owned_session(session_id, customer, provider="liveavatar", facts=facts)


class StartHandler(LiveAvatarSessionHandler):
    """Bearer-only, as upstream: our token in, LiveAvatar's token out; LiveAvatar's 201 body plus data.intro."""

    async def post(self):
        if self.credentials()[1] is None:
            raise Unauthorized("start needs the session token from /v1/sessions/token (Authorization: Bearer)")
        customer = await self.authenticate(provider="liveavatar")
        session = await self.liveavatar_session(customer)
        response = await self.gateway.liveavatar.start(session.upstream_token)
        if self.gateway.liveavatar.is_concurrency_error(response):
            raise ConcurrencyLimitExceeded("all of the gateway's LiveAvatar sessions are in use: try again shortly")
        if response.ok:
            await self.gateway.sessions.mark_started(session.session_id)
        body = response.json()
        if response.ok and isinstance(body, dict) and isinstance(body.get("data"), dict):
            for field in SERVER_SIDE_FIELDS:
                body["data"].pop(field, None)
            body["data"]["intro"] = customer.config.get("intro")
            return self.pass_through(response, body)
        self.pass_through(response)


class StopHandler(LiveAvatarSessionHandler):
    """Stops LiveAvatar's session, then ends ours: LiveAvatar's transcript, merged, goes to Petya once."""

    async def post(self):
        customer = await self.authenticate(provider="liveavatar")
        session = await self.liveavatar_session(customer, self.load_body(OPTIONAL_SESSION_REF))
        if session.status == "ended":  # the SDK's clean-up paths stop twice: spare LiveAvatar (and our rate limit)
            return self.send_json({"code": 1000, "data": None, "message": "Session stopped"})
        response = None
        try:
            response = await self.gateway.liveavatar.stop(session.session_id, "USER_CLOSED")
        finally:
            await self.gateway.lifecycle.end(session.session_id, "stopped", stop_upstream=response is None)
        self.pass_through(response)


class KeepAliveHandler(LiveAvatarSessionHandler):
    async def post(self):
        customer = await self.authenticate(provider="liveavatar")
        session = await self.liveavatar_session(customer, self.load_body(OPTIONAL_SESSION_REF), facts=True)
        self.pass_through(await self.gateway.liveavatar.keep_alive(session.session_id))
