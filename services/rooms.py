"""The gateway's room agents: a data-only participant (clients/livekit.py) in the LiveKit room of each session that has
one, held by exactly one gateway process at a time.

- **What an agent does.** In a LiveAvatar room serving HeyGen's contract (a *bridged* session) it publishes the
  commands HeyGen's calls become on `agent-control`, translates what LiveAvatar answers on `agent-response` into
  HeyGen's events (domain/bridge.py) — sent to the session's streaming.chat sockets (handlers/internal.py) and
  published in the room, where HeyGen's web SDK reads them — and queues the words as turns (services/turns.py). In a
  room of LiveAvatar's own contract (its web SDK commands the avatar) and in a HeyGen v2 room it only listens, and
  queues the avatar's and the user's words as turns as they are said.
- **One holder per room.** The holder is recorded on the session (`room_holder`, a process id whose lease says where
  to reach it: services/leases.py). A command reaching another process is forwarded to the holder over an internal
  call authenticated with a key derived from GATEWAY_SECRET (`internal_key`); while nobody live holds the room — a
  hand-over under way — the call is answered 503 with Retry-After: never published twice, never lost silently. Should
  two processes ever both think they hold it (one lost its lease to a MongoDB outage), LiveKit itself keeps one: both
  join with the same agent identity, and a duplicate identity replaces the older participant.
- **Take-over.** The sweep that finds a process's lease expired (services/lifecycle.py) moves that process's rooms to
  its own process and joins them: within LEASE_TTL + SWEEP_INTERVAL of a kill. What was said meanwhile comes back from
  LiveAvatar's transcript at the hand-off; a HeyGen room has none, so the session's `room_note` says the agent was
  away, and the hand-off carries that note.
- **Leaving.** An agent leaves when its session ends (here, or — seen at the next check — in another process), when
  LiveAvatar says `session.stopped` (the session is then ended, with LiveAvatar's reason), or when the room closes.
  An agent dropped for any other reason rejoins, a bounded number of times.

Bounded: a join within ROOM_JOIN_TIMEOUT; a sync task's wait within the call's timeout; the sockets listening to a
room's events are the relay's own (bounded by MAX_SOCKETS); a take-over joins at most TAKE_OVER_BATCH rooms a sweep.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol
from urllib.parse import quote

from livekit.protocol import models
from tornado.httpclient import AsyncHTTPClient

from clients.http import Upstream
from clients.livekit import DataParticipant, RoomData, RoomJoinError
from domain import bridge
from domain.errors import RoomUnavailable, ServiceUnavailable, UpstreamTimeout, UpstreamUnavailable
from domain.names import ProviderName
from domain.records import SessionFacts, Turn
from domain.usage import upstream_end_reason
from models.sessions import SessionRepository
from services.background import Background
from services.leases import Leases
from services.turns import TurnQueue

log = logging.getLogger("gateway.rooms")

REJOIN_ATTEMPTS = 3
REJOIN_DELAY = 1.0  # seconds before the first rejoin, doubling
LISTEN_JOIN_WAIT = 2.0  # seconds a start waits for a listening agent's join (it goes on joining after)
TAKE_OVER_BATCH = 1000  # rooms looked at per sweep
TAKE_OVER_JOINS = 50  # joins under way at once
HAND_OVER_RETRY = 2  # seconds a caller is told to wait while a room changes hands
# The server asked the agent to leave for good: another agent took its place, or the room is gone.
FINAL_LEAVES = (models.DisconnectReason.DUPLICATE_IDENTITY, models.DisconnectReason.ROOM_DELETED,
                models.DisconnectReason.PARTICIPANT_REMOVED)
INTERNAL_PREFIX = "/internal/rooms"



class Listener(Protocol):
    """What hears a bridged session's HeyGen events: its streaming.chat socket (handlers/internal.py)."""

    def send_event(self, text: str) -> None:
        """One HeyGen event, as JSON text."""

    def end(self, code: int, reason: str) -> None:
        """The room is left: no more events."""


def handing_over() -> ServiceUnavailable:
    """What a caller is answered while the session's room changes hands (nothing was done: its retry is safe)."""
    return ServiceUnavailable("the session's room is being handed over: try again shortly", retry_after=HAND_OVER_RETRY)


def internal_key(secret: str) -> str:
    """The key gateway processes present to each other (never one a customer or the browser holds)."""
    return hmac.new(secret.encode(), b"ilianaai-avatar internal calls v1", hashlib.sha256).hexdigest()


GAVE_UP_NOTE = ("the gateway's room agent could not join HeyGen's room: the avatar's words are those the client "
                "reported")


async def _wait_for(task: asyncio.Task[None] | None, wait: float) -> None:
    if task is not None:
        await asyncio.wait([task], timeout=wait)


class RoomAgent:
    """This process's agent in one session's room."""

    __slots__ = ("bridged", "listeners", "participant", "session", "stopping", "translator", "waiting", "words")

    def __init__(self, session: SessionFacts, participant: DataParticipant) -> None:
        self.session = session
        self.participant = participant
        self.bridged = session.bridged  # HeyGen's contract on LiveAvatar: translate, publish, command
        liveavatar = session.provider == ProviderName.LIVEAVATAR
        self.translator = bridge.Translator() if liveavatar else None  # LiveAvatar's events (words, its stop)
        self.words = None if liveavatar else bridge.HeyGenRoomWords()  # HeyGen's room: the avatar's words
        self.listeners: set[Listener] = set()
        self.waiting: dict[str, asyncio.Future[float]] = {}  # command event id -> when its speech ended
        self.stopping = False  # the gateway is stopping the session: LiveAvatar's session.stopped is its echo

    def end_listeners(self, code: int, reason: str) -> None:
        listeners, self.listeners = self.listeners, set()
        for listener in listeners:
            listener.end(code, reason)


class RoomAgents:
    def __init__(self, repository: SessionRepository, leases: Leases, turns: TurnQueue, background: Background,
                 http: AsyncHTTPClient, secret: str, join_timeout: float, call_timeout: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.repository = repository
        self.leases = leases
        self.turns = turns
        self.background = background
        self.http = http  # the shared curl client, for calls to the other processes
        self.key = internal_key(secret)
        self.join_timeout = join_timeout  # ROOM_JOIN_TIMEOUT
        self.call_timeout = call_timeout  # a forwarded call's whole bound (and a sync task's wait, less a margin)
        self.clock = clock
        self.agents: dict[str, RoomAgent] = {}
        # Ends a session for a reason the room gave (LiveAvatar's session.stopped): set by the lifecycle.
        self.end_session: Callable[[str, str], Coroutine[Any, Any, Any]] | None = None
        self._joining: dict[str, asyncio.Future[bool]] = {}  # session id -> the claim and join under way
        self._adopting: asyncio.Task[None] | None = None
        self._closed = False  # stopping: no more joins

    @property
    def process_id(self) -> str:
        return self.leases.process_id

    def __len__(self) -> int:
        return len(self.agents)

    # --- holding a room -----------------------------------------------------------------------------------------

    async def hold(self, session: SessionFacts, dead: tuple[str, ...] = ()) -> bool:
        """Have an agent in the session's room: this process's (claimed, then joined within ROOM_JOIN_TIMEOUT), or
        another live process's already. False when there is no room, or the session has ended. RoomUnavailable when
        the join failed (the claim is given back)."""
        if not session.room_url or not session.agent_token:
            return False
        if session.session_id in self.agents:
            return True
        while (joining := self._joining.get(session.session_id)) is not None:
            # A racing call of this process (a task, the socket, the sweep): one claim, one join. A take-over goes
            # on with its own claim when the racing call found the room held (by the dead process it takes over).
            held = await asyncio.shield(joining)
            if session.session_id in self.agents:
                return True
            if not dead:
                return held
        # Marked before the first await: two joins with the same identity would make LiveKit drop the first.
        future = self._joining[session.session_id] = asyncio.get_running_loop().create_future()
        try:
            claimed = await self.repository.hold_room(session.session_id, self.process_id, dead)
            if claimed is None:  # ended, or another process holds it
                stored = await self.repository.get(session.session_id)
                held = stored is not None and stored.status != "ended" and stored.room_holder is not None
            else:
                await self._join(session)
                held = True
            future.set_result(held)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: racing callers see it through their own await
            raise
        finally:
            del self._joining[session.session_id]
        return held

    async def _join(self, session: SessionFacts) -> None:
        assert session.room_url and session.agent_token
        agent: RoomAgent | None = None

        def heard(data: RoomData) -> None:
            if agent is not None:
                self._heard(agent, data)

        def disconnected(reason: str) -> None:
            if agent is not None:
                self._disconnected(agent, reason)

        participant = DataParticipant(session.room_url, session.agent_token, heard, disconnected)
        try:
            await participant.join(self.join_timeout)
        except RoomJoinError as exc:
            log.warning("room agent could not join the room of %s: %s", session.session_id, exc)
            try:
                if session.bridged:  # given back: the next sweep tries again (the session depends on it)
                    await self.repository.release_room(session.session_id, self.process_id)
                else:  # HeyGen's room only adds words: not tried again, and the hand-off says so
                    await self.repository.give_up_room(session.session_id, self.process_id, GAVE_UP_NOTE)
            except ServiceUnavailable:
                pass  # the claim lapses with this process's lease
            raise RoomUnavailable(f"the gateway could not join the session's room: {exc}") from None
        if self._closed:  # the process began stopping during the join: the room goes back to nobody
            await participant.leave()
            try:
                await self.repository.release_room(session.session_id, self.process_id)
            except ServiceUnavailable:
                pass
            raise RoomUnavailable("the gateway process is stopping")
        agent = RoomAgent(session, participant)
        self.agents[session.session_id] = agent
        log.info("room agent joined the room of %s", session.session_id)

    def hold_soon(self, session: SessionFacts, wait: float) -> Coroutine[Any, Any, None]:
        """Join in the background, waiting up to `wait` seconds for it (HeyGen's rooms: the start is not held up for
        long by a room server that is slow or away; the words are only an addition there)."""
        async def held() -> None:
            try:
                await self.hold(session)
            except (RoomUnavailable, ServiceUnavailable) as exc:
                log.warning("session %s runs without the room agent: %s", session.session_id, exc)
        joining = self.background.spawn(held())
        return _wait_for(joining, wait)

    async def leave(self, session_id: str) -> None:
        """This process's agent leaves the session's room (nothing when it holds none)."""
        agent = self.agents.pop(session_id, None)
        if agent is None:
            return
        for future in agent.waiting.values():
            if not future.done():
                future.cancel()
        agent.end_listeners(1000, "session ended")
        await agent.participant.leave()
        try:
            await self.repository.release_room(session_id, self.process_id)
        except ServiceUnavailable:
            pass
        log.info("room agent left the room of %s", session_id)

    async def close(self) -> None:
        """Graceful stop: no more joins; every agent leaves (the others adopt its rooms at their next sweep)."""
        self._closed = True
        adopting, self._adopting = self._adopting, None
        if adopting is not None:
            adopting.cancel()
            await asyncio.gather(adopting, return_exceptions=True)
        await asyncio.gather(*(self.leave(sid) for sid in list(self.agents)), return_exceptions=True)

    async def take_over(self, dead_process: str) -> int:
        """Join the rooms a dead process held (its lease expired), or ("") those nobody holds, TAKE_OVER_JOINS at a
        time; returns how many were joined."""
        limit = asyncio.Semaphore(TAKE_OVER_JOINS)

        async def adopt(session_id: str) -> bool:
            async with limit:
                session = await self.repository.get(session_id)
                if session is None:
                    return False
                try:
                    if not await self.hold(SessionFacts.of(session), dead=(dead_process,) if dead_process else ()):
                        return False
                except RoomUnavailable:
                    return False  # a later sweep finds it again, unheld
                if session.provider == ProviderName.HEYGEN and dead_process:
                    await self.repository.note_room(session_id, "the gateway's room agent was away from the room "
                                                    "for a while (its process stopped); words said then may be missing")
                log.warning("room of %s taken over from %s", session_id, dead_process or "nobody")
                return True

        found = await self.repository.rooms_held_by(dead_process, TAKE_OVER_BATCH)
        return sum(await asyncio.gather(*(adopt(sid) for sid in found if sid not in self.agents)))

    async def check(self) -> None:
        """Periodic (the sweep's): leave the rooms of sessions that ended elsewhere, and join the started sessions'
        rooms that nobody holds."""
        if self.agents:
            for session_id in await self.repository.ended_among(list(self.agents)):
                await self.leave(session_id)
        if self._adopting is None and not self._closed:  # joins take seconds when a room server is away
            self._adopting = self.background.spawn(self._adopt_orphans())

    async def _adopt_orphans(self) -> None:
        try:
            await self.take_over("")
        except ServiceUnavailable:
            pass
        finally:
            self._adopting = None

    async def lease_moved(self, process_id: str) -> None:
        """This process's lease has a new id: its rooms follow it (services/leases.py's LeaseFollower)."""
        if self.agents:
            await self.repository.rooms_moved(list(self.agents), self.process_id, process_id)

    def _disconnected(self, agent: RoomAgent, reason: str) -> None:
        session_id = agent.session.session_id
        if self.agents.get(session_id) is not agent:
            return  # it left on purpose
        del self.agents[session_id]
        for future in agent.waiting.values():
            if not future.done():
                future.set_exception(ServiceUnavailable("the room agent lost the room", retry_after=HAND_OVER_RETRY))
        agent.end_listeners(1001, "the room agent lost the room")
        log.warning("room agent of %s disconnected: %s", session_id, reason)
        if agent.participant.leave_reason in FINAL_LEAVES:
            self.background.spawn(self._let_go(session_id))
        else:
            self.background.spawn(self._rejoin(agent.session))

    async def _let_go(self, session_id: str) -> None:
        try:
            await self.repository.release_room(session_id, self.process_id)
        except ServiceUnavailable:
            pass

    async def _rejoin(self, session: SessionFacts) -> None:
        delay = REJOIN_DELAY
        for _ in range(REJOIN_ATTEMPTS):
            await asyncio.sleep(delay)
            delay *= 2
            try:
                if not await self.hold(session):
                    return  # ended, or held by another process now
                if session.session_id in self.agents:
                    return
            except (RoomUnavailable, ServiceUnavailable):
                continue
        await self._let_go(session.session_id)

    # --- what is heard ------------------------------------------------------------------------------------------

    def _heard(self, agent: RoomAgent, data: RoomData) -> None:
        now = self.clock()
        session_id = agent.session.session_id
        if agent.words is not None:  # a HeyGen room: the avatar's events, words only
            if data.sender == "heygen" and (turn := agent.words.hear(data.payload, now)) is not None:
                self._queue(session_id, turn)
            return
        if data.topic != bridge.RESPONSE_TOPIC:
            text = self._client_talk(data) if agent.bridged else None
            if text:  # HeyGen's SDK with its LiveKit transport publishes a talk in the room
                self.background.spawn(self.perform(session_id, bridge.command("avatar.speak_response", text)))
            return
        event = bridge.read_event(data.payload)
        if event is None or agent.translator is None:
            return
        translation = agent.translator.translate(event, now)
        for message in translation.events if agent.bridged else ():
            text = json.dumps(message)
            agent.participant.publish(text.encode())  # for HeyGen's SDK in the room
            for listener in list(agent.listeners):
                listener.send_event(text)
        if translation.turn is not None:
            self._queue(session_id, translation.turn)
        if translation.speech_ended is not None:
            waiting = agent.waiting.pop(translation.speech_ended, None)
            if waiting is not None and not waiting.done():
                waiting.set_result(now)
        if translation.stopped is not None and self.end_session is not None and not agent.stopping:
            self.background.spawn(self.end_session(session_id, upstream_end_reason(translation.stopped)))

    @staticmethod
    def _client_talk(data: RoomData) -> str | None:
        """A talk HeyGen's SDK published in the room (a JSON string, not a command); None for anything else."""
        try:
            text = json.loads(data.payload)
        except ValueError:
            return None
        if isinstance(text, str) and text.strip() and not text.startswith("push_to_talk:"):
            return text
        return None

    def _queue(self, session_id: str, turn: Turn) -> None:
        if not self.turns.put_nowait(session_id, turn):
            self.background.spawn(self.turns.put(session_id, turn))

    def stopping(self, session_id: str) -> None:
        """The gateway is about to stop the session upstream (its own end follows)."""
        agent = self.agents.get(session_id)
        if agent is not None:
            agent.stopping = True

    async def socket_address(self, session: SessionFacts) -> str | None:
        """The internal URL of the process holding the session's room, where its events are heard: this one's when
        nobody holds it yet (the plugin opens its socket before streaming.start: the agent joins now; RoomUnavailable
        when it cannot); None while its holder is not live (a hand-over under way)."""
        if session.session_id in self.agents:
            return self.leases.address
        stored = await self.repository.get(session.session_id)
        if stored is None:
            return None
        if not stored.room_holder or stored.room_holder == self.process_id:
            await self.hold(session)
            return self.leases.address
        return await self.leases.address_of(stored.room_holder)

    def socket_url(self, address: str, session_id: str) -> tuple[str, dict[str, str]]:
        """The internal socket of a bridged session's events at `address`, and the headers to present."""
        scheme, rest = address.split("://", 1)
        url = f"{'wss' if scheme == 'https' else 'ws'}://{rest.rstrip('/')}{INTERNAL_PREFIX}/" \
              f"{quote(session_id, safe='')}/socket"
        return url, {"Authorization": f"Bearer {self.key}"}

    def hears(self, session_id: str) -> bool:
        """Whether this process holds an agent in the bridged session's room (its events can be listened to here)."""
        agent = self.agents.get(session_id)
        return agent is not None and agent.bridged

    def listen(self, session_id: str, listener: Listener) -> bool:
        """Send the bridged session's HeyGen events to `listener`; False when this process holds no agent there."""
        agent = self.agents.get(session_id)
        if agent is None or not agent.bridged:
            return False
        agent.listeners.add(listener)
        return True

    def unlisten(self, session_id: str, listener: Listener) -> None:
        agent = self.agents.get(session_id)
        if agent is not None:
            agent.listeners.discard(listener)

    # --- commands -----------------------------------------------------------------------------------------------

    async def command(self, session: SessionFacts, command: dict[str, Any], wait: bool = False) -> dict[str, Any]:
        """Publish `command` in the bridged session's room, from whichever process holds it; with `wait`, answer
        once the avatar has finished the utterance it started. Returns {"published": True, "ended_at"?}."""
        if session.session_id not in self.agents:
            stored = await self.repository.get(session.session_id)
            holder = stored.room_holder if stored is not None else None
            if not holder or holder == self.process_id:  # "": nobody holds it (given back by a process that
                await self.hold(session)  # stopped, or by a failed rejoin): this process does, now
            else:
                return await self._forward(holder, session.session_id, command, wait)
        return await self.perform(session.session_id, command, wait)

    async def perform(self, session_id: str, command: dict[str, Any], wait: bool = False) -> dict[str, Any]:
        """Publish in the room this process holds (ServiceUnavailable when it holds it no more)."""
        agent = self.agents.get(session_id)
        if agent is None or not agent.participant.connected:
            raise ServiceUnavailable("the session's room is being handed over: try again shortly",
                                     retry_after=HAND_OVER_RETRY)
        waiting = None
        if wait:
            waiting = agent.waiting[command["event_id"]] = asyncio.get_running_loop().create_future()
        if agent.translator is not None:
            agent.translator.last_command = command["event_id"]
        agent.participant.publish(json.dumps(command).encode(), topic=bridge.COMMAND_TOPIC)
        if waiting is None:
            return {"published": True}
        try:
            ended_at = await asyncio.wait_for(asyncio.shield(waiting), max(1.0, self.call_timeout - 2))
        except TimeoutError:
            raise UpstreamTimeout("the avatar did not finish speaking in time") from None
        finally:
            agent.waiting.pop(command["event_id"], None)
        return {"published": True, "ended_at": ended_at}

    async def _forward(self, holder: str, session_id: str, command: dict[str, Any], wait: bool) -> dict[str, Any]:
        address = await self.leases.address_of(holder)
        if not address:
            raise ServiceUnavailable("the session's room is being handed over: try again shortly",
                                     retry_after=HAND_OVER_RETRY)
        path = f"{INTERNAL_PREFIX}/{quote(session_id, safe='')}/command"
        try:
            response = await Upstream(self.http, address, "gateway").call(
                "POST", path, headers={"Authorization": f"Bearer {self.key}"},
                body={"command": command, "wait": wait}, call="forward", timeout=self.call_timeout)
        except UpstreamUnavailable:  # not reached: nothing was published
            raise ServiceUnavailable("the session's room is being handed over: try again shortly",
                                     retry_after=HAND_OVER_RETRY) from None
        body = response.json()
        if response.ok and isinstance(body, dict):
            return body
        if response.status == 503:
            raise ServiceUnavailable("the session's room is being handed over: try again shortly",
                                     retry_after=HAND_OVER_RETRY)
        if response.status == 504:
            raise UpstreamTimeout("the avatar did not finish speaking in time")
        raise UpstreamUnavailable(f"the gateway process holding the room answered {response.status}")
