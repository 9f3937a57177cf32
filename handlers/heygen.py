"""HeyGen-compatible REST routes: a plugin built against HeyGen works unchanged against these."""
import asyncio
import time

from handlers.base import BaseHandler
from handlers.schemas import NEW_SESSION, SESSION_REF, TASK
from models.errors import ConcurrencyLimitExceeded, Unauthorized, UpstreamUnavailable
from models.transcript import new_turn

TURN_WRITE_WAIT = 0.5  # seconds a task's answer waits for its turn to be stored before answering anyway


class CreateTokenHandler(BaseHandler):
    """Mints HeyGen's session token server-side; the browser gets our opaque token bound to the customer."""

    async def post(self):
        customer = await self.authenticate(allow_token=False)
        response = await self.gateway.heygen.create_token()
        body = response.json()
        if not response.ok:
            return self.pass_through(response)
        heygen_token = ((body or {}).get("data") or {}).get("token")
        if not heygen_token:
            raise UpstreamUnavailable("HeyGen answered create_token without a token")
        token = self.gateway.tokens.mint("heygen", self.gateway.settings.token_ttl)
        await self.gateway.sessions.save_token(token, customer.id, "heygen", heygen_token, customer.config,
                                               self.gateway.settings.token_ttl)
        body["data"]["token"] = token
        self.send_json(body)


class NewSessionHandler(BaseHandler):
    """streaming.new with the customer's avatar config injected, answered with HeyGen's body plus data.intro."""

    async def post(self):
        customer = await self.authenticate(provider="heygen")
        request = self.load_body(NEW_SESSION)
        async with self.session_slot(customer):  # the customer's quota, before HeyGen is called
            await self.open_session(customer, request)

    async def open_session(self, customer, request):
        conversation_id = request.pop("conversation_id", None)
        sessions, heygen = self.gateway.sessions, self.gateway.heygen
        token = await sessions.claim_token(customer.id, customer.token.id if customer.token else None)
        if customer.token and token is None:
            raise Unauthorized("session token already used: create a new one")
        try:
            response = await heygen.new_session(heygen.new_session_body(request, customer.config),
                                                token.upstream_token if token else None)
        except Exception:
            if token:
                await sessions.release_token(token)
            raise
        body = response.json()
        session_id = ((body or {}).get("data") or {}).get("session_id") if response.ok else None
        if not session_id:
            if token and response.status != 401:  # HeyGen did not consume it
                await sessions.release_token(token)
            if response.ok:
                raise UpstreamUnavailable("HeyGen answered streaming.new without a session_id")
            if heygen.is_concurrency_error(response):
                raise ConcurrencyLimitExceeded("all of the gateway's HeyGen sessions are in use: try again shortly")
            return self.pass_through(response)
        self.log_session_id = session_id
        await self.record_new_session(heygen, session_id, conversation_id=conversation_id, customer=customer.id,
                                      upstream_token=token.upstream_token if token else None)
        if token:
            await sessions.bind_token(token, session_id)
        body["data"]["intro"] = customer.config.get("intro")
        self.send_json(body, response.status)


class SessionCallHandler(BaseHandler):
    """A per-session call forwarded to HeyGen once the caller is shown to own the session."""

    call = None
    schema = SESSION_REF

    async def post(self):
        customer = await self.authenticate(provider="heygen")
        request = self.load_body(self.schema)
        session = await self.owned_session(request["session_id"], customer, provider="heygen", facts=True)
        started, response = time.time(), None
        try:
            response = await self.gateway.heygen.session_call(self.call, request)
        finally:
            await self.settle(session, request, started, response)
        self.pass_through(response)

    async def settle(self, session, request, started, response):
        """What the call means for our record of the session (response is None when HeyGen was not reached)."""
class StartHandler(SessionCallHandler):
    call = "start"

    async def settle(self, session, request, started, response):
        if response is not None and response.ok:
            await self.gateway.sessions.mark_started(session.session_id)


class InterruptHandler(SessionCallHandler):
    call = "interrupt"


class KeepAliveHandler(SessionCallHandler):
    call = "keep_alive"


class StartListeningHandler(SessionCallHandler):
    call = "start_listening"


class StopListeningHandler(SessionCallHandler):
    call = "stop_listening"


class OtherSessionCallHandler(SessionCallHandler):
    """A HeyGen session call the gateway does not list (a newer SDK's): forwarded as `POST /v1/streaming.<name>`
    with the client's body once the caller is shown to own its `session_id`, so it can only ever act on the caller's
    own session. HeyGen's answer passes through (its 404 for a name it does not know)."""

    async def post(self, name):
        self.call = name
        await super().post()


class TaskHandler(SessionCallHandler):
    """A talk task is the user speaking; a repeat task is the avatar saying the given words. Its turn is queued
    for MongoDB (models.turns): the answer is HeyGen's, whether or not MongoDB is there at that moment."""

    call = "task"
    schema = TASK

    async def post(self):
        with self.gateway.turns.take_slot() as self.slot:  # before HeyGen performs it: 503 when the queue is full
            await super().post()

    async def settle(self, session, request, started, response):
        if response is None or not response.ok:
            return
        role = "avatar" if request.get("task_type", "repeat") == "repeat" else "user"
        task_id = ((response.json() or {}).get("data") or {}).get("task_id")
        stored = self.slot.submit(
            session.session_id, new_turn(role, request["text"], started, "task", str(task_id) if task_id else None))
        # Usually stored within a millisecond, so the transcript reads it back at once; never waited on for long.
        await asyncio.wait([stored], timeout=TURN_WRITE_WAIT)


class StopHandler(SessionCallHandler):
    """Stops HeyGen's session, then ends ours: the transcript goes to Petya exactly once."""

    call = "stop"

    async def settle(self, session, request, started, response):
        # HeyGen not reached: the lifecycle tries the stop once more, and records why it failed.
        await self.gateway.lifecycle.end(session.session_id, "stopped", stop_upstream=response is None)
