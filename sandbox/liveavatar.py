"""An emulator of the LiveAvatar API (api.liveavatar.com) for tests and sandbox mode.

Follows the upstream reference (docs/upstream.md#liveavatar-rest-api): success envelope `{"code": 1000, "data": ...,
"message": ...}`, FastAPI-shaped 422s, `X-API-KEY` or `Authorization: Bearer <session_token>` per endpoint, 201 on
/v1/sessions/start, server-side transcripts. Sessions live in memory. Choices the reference leaves open are marked
UNVERIFIED.

Transcript paging (an emulator design; the real cursor semantics are UNVERIFIED): `start_timestamp` is exclusive
(entries strictly after it), `end_timestamp` inclusive. A page holds at most `transcript_page_size` entries in time
order and never splits a run of equal timestamps, so `next_timestamp` (the last returned entry's timestamp) can be
passed back as `start_timestamp` without repeating or skipping anything. A page is cut before such a run; only a run
longer than a whole page is returned in one (oversized) page.

FULL mode in a room (when the emulator is given `rooms`, a sandbox.livekit.RoomServer;
docs/upstream.md#liveavatar-room-events, #livekit-signalling): `start` makes a room named after the session and answers
its `livekit_url` and two LiveKit JWTs, `livekit_client_token` (identity "client") and `livekit_agent_token` (identity
"agent"); the synthetic avatar joins as `heygen` (video + audio) and the session's agent as
`liveavatar-agent-<session_id>`. The agent obeys JSON commands on topic `agent-control` (what @heygen/liveavatar-web-sdk
0.0.18 sends: `{event_id, event_type, text}`) and answers on `agent-response`, each event `{event_id (its own),
event_type, session_id, source_event_id (the command's event_id, or null)}` plus its fields (the shape the SDK reads and
docs/upstream.md#liveavatar-room-events lists):
- `avatar.speak_text {text}`: the avatar says `text`: `avatar.speak_started`, one `avatar.transcription.chunk` per
  word, then `avatar.transcription {text}` (what was said) and `avatar.speak_ended`.
- `avatar.speak_response {text}`: the user's turn: `user.transcription {text}`, then the avatar says a reply from the
  sandbox's stand-in for the LLM (`sandbox_reply`), with the events above.
- `avatar.interrupt`: the speech under way stops (its `avatar.transcription` holds the words said) and queued ones
  are dropped.
- `avatar.start_listening` / `avatar.stop_listening`: recorded (`listening`); nothing is answered.
- when the session ends (stop, idle, max duration): `session.stopped {stop_reason}`, then the room closes.
Speeches queue, one at a time. The web SDK 0.0.18 waits for both participants in `start()`, and on `session.stopped`
cleans up (sending /v1/sessions/stop again). The server-side transcript is what was said in the room: the user's
turns and the avatar's speech (as far as it got), each stamped when it began. UNVERIFIED (invented here;
LiveAvatar's documentation does not say): the client/agent identities, which events carry a source_event_id, a chunk
per word, `user.transcription` for a typed message, an interrupted speech still ending with `avatar.transcription` +
`avatar.speak_ended`, interrupt dropping queued speeches, silence on start/stop_listening, the room closing after
`session.stopped`, commands counting as activity for the idle timer, the sandbox reply's wording.
Without `rooms` (a standalone emulator) `start` answers the constant `livekit_url` and JWT-shaped tokens no server
checks; the transcript then only holds what the test hooks `avatar_says` / `user_says` put in it.
"""
import asyncio
import base64
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import tornado.httputil
import tornado.ioloop
import tornado.web

from sandbox.common import EmulatorHandler, Recorder, new_id

try:  # the room server's dependencies are in the sandbox extra; a standalone emulator does without them
    from sandbox.avatar import SECONDS_PER_WORD, Avatar
except ImportError:  # pragma: no cover
    Avatar, SECONDS_PER_WORD = None, 0.35

DEFAULT_AVATAR_ID = "dd73ea75-1218-4ef3-92ce-606d5f7fbc0a"  # the sandbox avatar (docs/upstream.md#liveavatar-rest-api)
DEFAULT_AVATARS = frozenset({
    DEFAULT_AVATAR_ID,
    "0930fd59-c8ad-434d-ad53-b391a1768720",
    "7b888024-f8c9-4205-95e1-78ce01497bda",
    "b7e8a3c1-5d2f-4e6a-9c1b-3f8d2e7a4b60",
})
DEFAULT_LIVEKIT_URL = "wss://liveavatar-sandbox.livekit.invalid"

SUCCESS = 1000
MODES = ("FULL", "LITE")
STOP_REASONS = ("UNKNOWN", "USER_DISCONNECTED", "SERVER_ERROR", "IDLE_TIMEOUT", "NO_CREDITS", "USER_CLOSED",
                "AVATAR_DELETED", "MAX_DURATION_REACHED", "ZOMBIE_SESSION_REAP", "AGENT_HANG_UP")
LIST_TYPES = ("active", "historic")
# UNVERIFIED: the real limits are per tier; the sandbox lasts "~1 min" (docs/upstream.md#liveavatar-rest-api).
SANDBOX_MAX_DURATION = 60
DEFAULT_MAX_DURATION = 1200
DEFAULT_PAGE_SIZE = 20  # UNVERIFIED default of GET /v1/sessions; page_size <= 100 is documented
COMMAND_TOPIC = "agent-control"  # the web SDK's LIVEKIT_COMMAND_CHANNEL_TOPIC
RESPONSE_TOPIC = "agent-response"  # the web SDK's LIVEKIT_SERVER_RESPONSE_CHANNEL_TOPIC
AVATAR_IDENTITY = "heygen"  # the web SDK's HEYGEN_PARTICIPANT_ID: it takes this participant's tracks
CLIENT_IDENTITY, AGENT_TOKEN_IDENTITY = "client", "agent"  # UNVERIFIED: the identities in the two LiveKit tokens
ROOM_CLOSE_GRACE = 0.5  # seconds between session.stopped and the room closing (the event must reach the clients)


def agent_identity(session_id):
    return f"liveavatar-agent-{session_id}"


def sandbox_reply(text):
    """The sandbox's stand-in for the session's LLM: a fixed, recognisable answer to a user's turn."""
    return f"You said: {text.strip()} This is the sandbox avatar's answer."


class Reject(tornado.web.HTTPError):
    """Ends a request with `status` and the JSON `body`."""

    def __init__(self, status, body, headers=None):
        super().__init__(status)
        self.body = body
        self.headers = headers or {}


def error(status, code, message, data=None):
    return Reject(status, {"code": code, "message": message, "data": data})


def unauthorized():
    return error(401, 4001, "Unauthorized")  # UNVERIFIED code 4001


def session_not_found():
    return error(404, 4004, "Session not found")  # UNVERIFIED code and message


def invalid(*details):
    """A 422 in FastAPI's shape."""
    return Reject(422, {"detail": list(details)})


def missing(loc, parent):
    return {"type": "missing", "loc": loc, "msg": "Field required", "input": parent}


def enum_error(loc, value, allowed):
    expected = " or ".join(f"'{v}'" for v in allowed)
    return {"type": "enum", "loc": loc, "msg": f"Input should be {expected}", "input": value,
            "ctx": {"expected": expected}}


def uuid_error(loc, value):
    """The FastAPI error for a value that is not a uuid, or None when it is one."""
    if not isinstance(value, str):
        return {"type": "uuid_type", "loc": loc, "msg": "UUID input should be a string, bytes or UUID object",
                "input": value}
    try:
        uuid.UUID(value)
    except ValueError:
        return {"type": "uuid_parsing", "loc": loc, "msg": "Input should be a valid UUID, invalid UUID string",
                "input": value, "ctx": {"error": "invalid UUID string"}}
    return None


def canonical_uuid(value):
    return str(uuid.UUID(value))


def iso(timestamp):
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat().replace(
        "+00:00", "Z")


def jwt_like(claims):
    """A token shaped like a JWT (header.claims.signature); nothing verifies its signature."""
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.{new_id()}"


def token_body_errors(body):
    """FastAPI 422 details for a POST /v1/sessions/token body (the fields the gateway may send)."""
    errors = []
    mode = body.get("mode")
    if "mode" not in body:
        errors.append(missing(["body", "mode"], body))
    elif mode not in MODES:
        errors.append(enum_error(["body", "mode"], mode, MODES))
    if "avatar_id" not in body:
        errors.append(missing(["body", "avatar_id"], body))
    else:
        errors.append(uuid_error(["body", "avatar_id"], body["avatar_id"]))
    if body.get("llm_configuration_id") is not None:
        errors.append(uuid_error(["body", "llm_configuration_id"], body["llm_configuration_id"]))
    if "is_sandbox" in body and not isinstance(body["is_sandbox"], bool):
        errors.append({"type": "bool_type", "loc": ["body", "is_sandbox"], "msg": "Input should be a valid boolean",
                       "input": body["is_sandbox"]})
    duration = body.get("max_session_duration")
    if duration is not None and (isinstance(duration, bool) or not isinstance(duration, int) or duration <= 0):
        errors.append({"type": "int_type", "loc": ["body", "max_session_duration"],
                       "msg": "Input should be a valid positive integer", "input": duration})
    if mode == "FULL":
        errors.extend(persona_errors(body))
    return [e for e in errors if e]


def persona_errors(body):
    if "avatar_persona" not in body:
        return [missing(["body", "avatar_persona"], body)]
    persona = body["avatar_persona"]
    if not isinstance(persona, dict):
        return [{"type": "model_type", "loc": ["body", "avatar_persona"],
                 "msg": "Input should be a valid dictionary or instance of AvatarPersona", "input": persona}]
    errors = [uuid_error(["body", "avatar_persona", key], persona[key])
              for key in ("voice_id", "context_id") if persona.get(key) is not None]
    if "language" in persona and not isinstance(persona["language"], str):
        errors.append({"type": "string_type", "loc": ["body", "avatar_persona", "language"],
                       "msg": "Input should be a valid string", "input": persona["language"]})
    return errors


@dataclass
class EmulatedSession:
    """One LiveAvatar session: minted by /token, then started, then stopped."""
    session_id: str
    token: str
    body: dict  # the token request JSON
    status: str = "minted"  # "minted" | "started" | "stopped"
    stop_reason: str | None = None  # the `reason` a stop request carried
    end_reason: str | None = None
    transcript: list = field(default_factory=list)  # {role, transcript, absolute_timestamp, relative_timestamp}
    events_deleted: bool = False  # DELETE /v1/sessions/{id}/events was called
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    ended_at: float | None = None
    last_activity: float = field(default_factory=time.time)
    livekit_client_token: str | None = None
    livekit_agent_token: str | None = None
    events: list = field(default_factory=list)  # agent-response events for the room's clients, oldest first
    commands: list = field(default_factory=list)  # agent-control commands received in the room, oldest first
    room: object = None  # sandbox.livekit.Room while the session is started with a room server
    avatar: object = None  # sandbox.avatar.Avatar in that room
    agent: object = None  # the liveavatar-agent-<session_id> ServerParticipant
    listening: bool = False  # avatar.start_listening / avatar.stop_listening
    speeches: object = None  # asyncio.Queue of (event_id, text) for the avatar to say, in order
    speaker: object = None  # the task saying them
    speech: dict | None = None  # the speech under way: {event_id, words said, started_at, recorded}

    @property
    def mode(self):
        return self.body.get("mode")

    @property
    def is_sandbox(self):
        return self.body.get("is_sandbox") is True

    @property
    def avatar_id(self):
        return canonical_uuid(self.body["avatar_id"])

    @property
    def context_id(self):
        context_id = (self.body.get("avatar_persona") or {}).get("context_id")
        return canonical_uuid(context_id) if context_id else None

    @property
    def max_session_duration(self):
        default = SANDBOX_MAX_DURATION if self.is_sandbox else DEFAULT_MAX_DURATION
        return self.body.get("max_session_duration") or default


class LiveAvatarEmulator:
    """The LiveAvatar API in memory. `make_app()` serves it; the attributes are for tests to inspect and steer."""

    def __init__(self, api_key="sandbox-liveavatar-key", known_avatars=DEFAULT_AVATARS, known_contexts=None,
                 idle_timeout=300.0, transcript_page_size=50, response_delay=0.0, max_sessions=None,
                 livekit_url=DEFAULT_LIVEKIT_URL, rooms=None, seconds_per_word=SECONDS_PER_WORD):
        """known_avatars / known_contexts: accepted uuids, or None to accept any uuid.
        max_sessions: how many sessions may be started (running) at once, or None for no limit.
        rooms: a sandbox.livekit.RoomServer for FULL mode in rooms (see the module docstring), or None.
        seconds_per_word: how long the room's avatar takes per word."""
        self.api_key = api_key
        self.known_avatars = None if known_avatars is None else {canonical_uuid(a) for a in known_avatars}
        self.known_contexts = None if known_contexts is None else {canonical_uuid(c) for c in known_contexts}
        self.idle_timeout = idle_timeout
        self.transcript_page_size = transcript_page_size
        self.response_delay = response_delay
        self.max_sessions = max_sessions
        self.livekit_url = livekit_url
        self.rooms = rooms  # sandbox.livekit.RoomServer where the sessions' rooms live, or None
        self.seconds_per_word = seconds_per_word
        # Requests per credential and endpoint in each fixed 1-second window (docs/upstream.md#liveavatar-rate-limits),
        # None for no limit. LiveAvatar's real numbers are UNVERIFIED.
        self.rate_limit = None
        self._windows = {}  # (credential, endpoint) -> (window second, count)
        self.rate_limited = 0  # requests answered 429
        self.recorder = Recorder()
        self.sessions = {}
        self.transcript_fail_status = None
        self.events_delete_fail_status = None  # tests: DELETE .../events answers this status while set
        # Context ids whose FULL token requests come back LITE, as a context with a voice agent (e.g. ElevenLabs)
        # does upstream (docs/upstream.md#liveavatar-token-claims).
        self.lite_contexts = set()
        self._reaper = None
        self._closing = set()  # rooms closing after their session's end (cancelled by stop())

    def make_app(self):
        args = {"emulator": self}
        return tornado.web.Application([
            (r"/v1/sessions/token", TokenHandler, args),
            (r"/v1/sessions/start", StartHandler, args),
            (r"/v1/sessions/stop", StopHandler, args),
            (r"/v1/sessions/keep-alive", KeepAliveHandler, args),
            (r"/v1/sessions", SessionListHandler, args),
            (r"/v1/sessions/([^/]+)/transcript", TranscriptHandler, args),
            (r"/v1/sessions/([^/]+)/events", EventsHandler, args),
            (r"/v1/sessions/([^/]+)", SessionHandler, args),
        ], default_handler_class=NotFoundHandler, default_handler_args=args)

    # --- session life cycle -------------------------------------------------------------------------------------

    def mint(self, body):
        session_id = str(uuid.uuid4())
        # The web SDK decodes the token and reads start_session_data.mode (and agent settings) from it
        # (docs/upstream.md#liveavatar-token-claims). That it holds the token request's fields is UNVERIFIED; mode is
        # what the SDK needs.
        if self.lite_contexts and (body.get("avatar_persona") or {}).get("context_id") in self.lite_contexts:
            body = {**body, "mode": "LITE"}  # a context bound to a voice agent makes a LITE session (UNVERIFIED how)
        token = jwt_like({"session_id": session_id, "iat": int(time.time()), "start_session_data": dict(body)})
        session = EmulatedSession(session_id=session_id, token=token, body=body)
        self.sessions[session_id] = session
        return session

    def session_for_token(self, token):
        return next((s for s in self.sessions.values() if token and s.token == token), None)

    def start(self, session):
        if session.status == "started":
            raise error(400, 4000, "Session already started")  # UNVERIFIED
        if session.status == "stopped":
            raise error(400, 4000, "Session already stopped")  # UNVERIFIED
        if self.max_sessions is not None and len(self.active_sessions()) >= self.max_sessions:
            raise error(400, 4000, "Concurrent session limit reached")  # UNVERIFIED status, code and message
        now = time.time()
        session.status, session.started_at, session.last_activity = "started", now, now
        expires = int(now) + session.max_session_duration
        if self.rooms is not None:
            ttl = session.max_session_duration + 60
            session.livekit_client_token = self.rooms.token(session.session_id, CLIENT_IDENTITY, ttl=ttl)
            session.livekit_agent_token = self.rooms.token(session.session_id, AGENT_TOKEN_IDENTITY, ttl=ttl)
        else:
            session.livekit_client_token = jwt_like(
                {"sub": "client", "exp": expires, "video": {"room": session.session_id, "roomJoin": True}})
            session.livekit_agent_token = jwt_like(
                {"sub": "agent", "exp": expires, "video": {"room": session.session_id, "roomJoin": True}})
        self._start_reaper()

    @property
    def room_url(self):
        return self.rooms.url if self.rooms is not None else self.livekit_url

    async def open_room(self, session):
        """The started session's room, with the avatar (`heygen`) and the agent in it (FULL mode with a room
        server; LITE sessions get no room here: their ws_url transport is not emulated)."""
        if self.rooms is None or session.mode != "FULL" or session.room is not None:
            return
        room = session.room = self.rooms.room(session.session_id)
        session.avatar = Avatar(name="LiveAvatar sandbox", seconds_per_word=self.seconds_per_word)
        session.speeches = asyncio.Queue()
        session.speaker = asyncio.ensure_future(self._speak_all(session))
        await session.avatar.join(room, identity=AVATAR_IDENTITY, name="Avatar")
        session.agent = await room.add_server_participant(
            agent_identity(session.session_id), name="LiveAvatar agent",
            on_data=lambda received: self.on_command(session, received))

    def end(self, session, end_reason, stop_reason=None):
        """Stops `session`; a session already stopped keeps its first end_reason."""
        if session.status == "stopped":
            return
        session.status, session.ended_at = "stopped", time.time()
        session.end_reason, session.stop_reason = end_reason, stop_reason
        self._finish_speech(session)  # what the avatar said so far is in the transcript before anyone reads it
        if session.avatar is not None:
            while not session.speeches.empty():
                session.speeches.get_nowait()
            session.avatar.interrupt()
        # What the room's clients are told on agent-response (the session's events without a room).
        self.send(session, "session.stopped", None, stop_reason=end_reason)
        if session.room is not None:
            closing = asyncio.get_event_loop().create_task(self._close_room(session))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def _close_room(self, session, grace=ROOM_CLOSE_GRACE):
        await asyncio.sleep(grace)
        if session.speaker is not None:
            session.speaker.cancel()
        room, session.room = session.room, None
        if room is not None:
            await room.close()

    # --- the room: commands in, events out ----------------------------------------------------------------------

    def send(self, session, event_type, source_event_id=None, **fields):
        """Keep an event and publish it on agent-response from the agent (when there is a room). Every event has its
        own event_id, its event_type, the session_id and the source_event_id of the command it answers (or null):
        the fields the web SDK 0.0.18 reads and docs/upstream.md#liveavatar-room-events lists."""
        event = {"event_id": str(uuid.uuid4()), "event_type": event_type, "session_id": session.session_id,
                 "source_event_id": source_event_id, **fields}
        session.events.append(event)
        if session.agent is not None and session.room is not None:
            session.agent.publish_data(json.dumps(event), topic=RESPONSE_TOPIC)

    def on_command(self, session, received):
        """An agent-control packet from a client of the session's room."""
        if received.topic != COMMAND_TOPIC or session.status != "started":
            return
        try:
            command = json.loads(received.payload)
        except ValueError:
            return  # UNVERIFIED: undecodable commands are ignored
        if not isinstance(command, dict):
            return
        command = {**command, "from": received.identity}
        session.commands.append(command)
        self.touch(session)
        kind, event_id = command.get("event_type"), command.get("event_id")
        text = command.get("text") if isinstance(command.get("text"), str) else ""
        if kind == "avatar.speak_text" and text.strip():
            session.speeches.put_nowait((event_id, text))
        elif kind == "avatar.speak_response" and text.strip():
            self._say(session.session_id, "user", text, None)
            self.send(session, "user.transcription", event_id, text=text)
            session.speeches.put_nowait((event_id, sandbox_reply(text)))
        elif kind == "avatar.interrupt":
            while not session.speeches.empty():
                session.speeches.get_nowait()
            session.avatar.interrupt()
        elif kind == "avatar.start_listening":
            session.listening = True
        elif kind == "avatar.stop_listening":
            session.listening = False

    async def _speak_all(self, session):
        """Say the queued speeches one after another, with their events."""
        while True:
            event_id, text = await session.speeches.get()
            if session.status != "started":
                continue
            session.speech = {"event_id": event_id, "words": [], "started_at": time.time(), "recorded": False}
            self.send(session, "avatar.speak_started", event_id)

            def on_word(index, word, speech=session.speech, event_id=event_id):
                if session.status != "started" or speech["recorded"]:
                    session.avatar.interrupt()  # the session ended between the queue and the first word
                    return
                speech["words"].append(word)
                self.touch(session)
                self.send(session, "avatar.transcription.chunk", event_id, text=word)
            try:
                await session.avatar.speak(text, on_word=on_word)
            finally:
                self._finish_speech(session)

    def _finish_speech(self, session):
        """The speech under way ends: its words go to the transcript (stamped when it began), and the room hears
        avatar.transcription and avatar.speak_ended."""
        speech, session.speech = session.speech, None
        if speech is None or speech["recorded"]:
            return
        speech["recorded"] = True
        said = " ".join(speech["words"])
        if said:
            self._say(session.session_id, "avatar", said, speech["started_at"])
        self.send(session, "avatar.transcription", speech["event_id"], text=said)
        self.send(session, "avatar.speak_ended", speech["event_id"])

    def touch(self, session):
        session.last_activity = time.time()

    def active_sessions(self):
        """Started sessions that are not stopped yet."""
        return [s for s in self.sessions.values() if s.status == "started"]

    # --- background reaping -------------------------------------------------------------------------------------

    def _start_reaper(self):
        if self._reaper is None:
            interval_ms = min(max(self.idle_timeout * 1000 / 5, 10), 1000)
            self._reaper = tornado.ioloop.PeriodicCallback(self.reap, interval_ms)
            self._reaper.start()

    def reap(self, now=None):
        """Stops started sessions idle for idle_timeout (IDLE_TIMEOUT) or past their max_session_duration."""
        now = time.time() if now is None else now
        for session in self.active_sessions():
            if now - session.last_activity >= self.idle_timeout:
                self.end(session, "IDLE_TIMEOUT")
            elif now - session.started_at >= session.max_session_duration:
                self.end(session, "MAX_DURATION_REACHED")

    def stop(self):
        """Cancels the idle reaper and the avatars' speeches (the room server closes the rooms)."""
        if self._reaper is not None:
            self._reaper.stop()
            self._reaper = None
        for session in self.sessions.values():
            if session.speaker is not None:
                session.speaker.cancel()
        for closing in list(self._closing):
            closing.cancel()

    # --- transcripts --------------------------------------------------------------------------------------------

    def avatar_says(self, session_id, text, at=None):
        """Test hook, a side door: puts `text` in the transcript as the avatar's (at unix time `at`, default now)
        without anything said in a room. Sessions in a room are better driven by agent-control commands."""
        return self._say(session_id, "avatar", text, at)

    def user_says(self, session_id, text, at=None):
        """Test hook, a side door: puts `text` in the transcript as the user's (at unix time `at`, default now)
        without anything said in a room."""
        return self._say(session_id, "user", text, at)

    def _say(self, session_id, role, text, at):
        session = self.sessions[session_id]
        at = time.time() if at is None else at
        entry = {"role": role, "transcript": text, "absolute_timestamp": at,
                 "relative_timestamp": at - (session.started_at or session.created_at)}
        session.transcript.append(entry)
        self.touch(session)  # UNVERIFIED: speech in the room counts as activity for the idle timer
        return entry

    def transcript_page(self, session, start=None, end=None):
        """(entries, next_timestamp) for one page; see the module docstring for the paging scheme."""
        def stamp(entry):
            return entry["absolute_timestamp"]
        entries = sorted((e for e in session.transcript
                          if (start is None or stamp(e) > start) and (end is None or stamp(e) <= end)), key=stamp)
        size = self.transcript_page_size
        if len(entries) <= size:
            return [dict(e) for e in entries], None
        cut = size
        while cut > 0 and stamp(entries[cut]) == stamp(entries[cut - 1]):
            cut -= 1
        if cut == 0:  # one run of equal timestamps fills more than a page: return all of it
            cut = size
            while cut < len(entries) and stamp(entries[cut]) == stamp(entries[0]):
                cut += 1
        page = [dict(e) for e in entries[:cut]]
        return page, (stamp(page[-1]) if cut < len(entries) else None)

    # --- listings -----------------------------------------------------------------------------------------------

    def describe(self, session):
        """The GET /v1/sessions entry for `session`."""
        end = session.ended_at
        duration = 0 if session.started_at is None else (end or time.time()) - session.started_at
        return {
            "id": session.session_id,
            "created_at": iso(session.created_at),
            "updated_at": iso(end or session.last_activity),
            "duration": round(duration),  # UNVERIFIED: whole seconds
            "source": "API",
            "mode": session.mode,
            "is_sandbox": session.is_sandbox,
            "credits_consumed": 0.0 if session.is_sandbox else round(duration / 60, 2),  # UNVERIFIED rate
            "end_at": iso(end),
            "end_reason": session.end_reason,
        }


class LiveAvatarHandler(EmulatorHandler):
    """Adds LiveAvatar auth, the success envelope, FastAPI-style errors and the response delay."""

    async def prepare(self):
        super().prepare()
        self.enforce_rate_limit()
        if self.emulator.response_delay > 0:
            await asyncio.sleep(self.emulator.response_delay)

    def enforce_rate_limit(self):
        """LiveAvatar counts calls per credential (our API key, or a session's Bearer token) and endpoint in fixed
        1-second windows; over the limit: 429 with Retry-After and X-RateLimit-Reset. The body is UNVERIFIED."""
        limit = self.emulator.rate_limit
        if limit is None:
            return
        credential = self.request.headers.get("X-API-KEY") or self.bearer() or "-"
        endpoint = self.request.path.rsplit("/", 1)[-1] if "/transcript" not in self.request.path else "transcript"
        now = time.time()
        second, count = self.emulator._windows.get((credential, endpoint), (int(now), 0))
        if second != int(now):
            second, count = int(now), 0
        self.emulator._windows[(credential, endpoint)] = (second, count + 1)
        if count + 1 > limit:
            self.emulator.rate_limited += 1
            raise Reject(429, {"code": 4029, "message": "Rate limit exceeded", "data": None},
                         {"Retry-After": "1", "X-RateLimit-Reset": str(second + 1)})

    def ok(self, data, message, status=200):
        self.reply(status, {"code": SUCCESS, "data": data, "message": message})

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        body = exc.body if isinstance(exc, Reject) else {"detail": self._reason}
        for name, value in (exc.headers if isinstance(exc, Reject) else {}).items():
            self.set_header(name, value)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def has_api_key(self):
        return self.request.headers.get("X-API-KEY") == self.emulator.api_key

    def require_api_key(self):
        if not self.has_api_key():
            raise unauthorized()

    def require_bearer_session(self):
        session = self.emulator.session_for_token(self.bearer())
        if session is None:
            raise unauthorized()
        return session

    def body_object(self, required=False):
        """The JSON object body ({} when empty and not required); a FastAPI 422 otherwise."""
        if not self.request.body:
            if required:
                raise invalid({"type": "missing", "loc": ["body"], "msg": "Field required", "input": None})
            return {}
        try:
            body = json.loads(self.request.body)
        except ValueError as exc:
            raise invalid({"type": "json_invalid", "loc": ["body", getattr(exc, "pos", 0)], "msg": "JSON decode error",
                           "input": {}, "ctx": {"error": getattr(exc, "msg", str(exc))}}) from None
        if not isinstance(body, dict):
            raise invalid({"type": "model_attributes_type", "loc": ["body"],
                           "msg": "Input should be a valid dictionary or object to extract fields from",
                           "input": body})
        return body

    def find_session(self, session_id, loc):
        problem = uuid_error(loc, session_id)
        if problem:
            raise invalid(problem)
        session = self.emulator.sessions.get(canonical_uuid(session_id))
        if session is None:
            raise session_not_found()
        return session

    def target_session(self, body):
        """The session a stop/keep-alive addresses: the Bearer token's, or body session_id with X-API-KEY."""
        session = self.emulator.session_for_token(self.bearer())
        if session is not None:
            if body.get("session_id") not in (None, session.session_id):
                raise error(400, 4000, "session_id does not match the session token")  # UNVERIFIED
            return session
        if not self.has_api_key():
            raise unauthorized()
        if body.get("session_id") is None:
            raise error(400, 4000, "session_id is required")  # UNVERIFIED
        return self.find_session(body["session_id"], ["body", "session_id"])


class NotFoundHandler(LiveAvatarHandler):
    """Unknown paths: FastAPI's `{"detail": "Not Found"}`."""

    async def prepare(self):
        await super().prepare()
        raise tornado.web.HTTPError(404)


class TokenHandler(LiveAvatarHandler):
    async def post(self):
        self.require_api_key()
        body = self.body_object(required=True)
        errors = token_body_errors(body)
        if errors:
            raise invalid(*errors)
        problems = []
        known_avatars, known_contexts = self.emulator.known_avatars, self.emulator.known_contexts
        if known_avatars is not None and canonical_uuid(body["avatar_id"]) not in known_avatars:
            problems.append({"loc": ["avatar_id"], "message": "Avatar not found", "params": {}})
        context_id = (body.get("avatar_persona") or {}).get("context_id") if body["mode"] == "FULL" else None
        if context_id and known_contexts is not None and canonical_uuid(context_id) not in known_contexts:
            problems.append({"loc": ["context_id"], "message": "Context not found", "params": {}})
        if problems:
            # Observed body; its HTTP status (400) is UNVERIFIED.
            raise error(400, 4000, "Errors validating session token", problems)
        session = self.emulator.mint(body)
        self.ok({"session_id": session.session_id, "session_token": session.token}, "Session token created")


class StartHandler(LiveAvatarHandler):
    async def post(self):
        session = self.require_bearer_session()
        self.emulator.start(session)
        try:
            await self.emulator.open_room(session)
        except Exception as exc:  # RoomFull from the room server: the sandbox's room limits
            self.emulator.end(session, "SERVER_ERROR")
            raise error(503, 5003, f"No room for the session: {exc}") from None  # UNVERIFIED status, code, message
        self.ok({
            "session_id": session.session_id,
            "livekit_url": self.emulator.room_url,
            "livekit_client_token": session.livekit_client_token,
            "livekit_agent_token": session.livekit_agent_token,  # UNVERIFIED: always present in FULL mode
            "max_session_duration": session.max_session_duration,
            "ws_url": None,  # LITE mode only
        }, "Session started", status=201)


class StopHandler(LiveAvatarHandler):
    async def post(self):
        body = self.body_object()
        reason = body.get("reason")
        if reason is not None and reason not in STOP_REASONS:
            raise invalid(enum_error(["body", "reason"], reason, STOP_REASONS))
        session = self.target_session(body)
        # UNVERIFIED: stopping a stopped session answers 200 again and keeps the first end_reason (idempotent).
        self.emulator.end(session, reason or "UNKNOWN", stop_reason=reason)
        self.ok(None, "Session stopped")


class KeepAliveHandler(LiveAvatarHandler):
    async def post(self):
        session = self.target_session(self.body_object())
        if session.status == "stopped":
            raise error(400, 4000, "Session is not active")  # UNVERIFIED message
        self.emulator.touch(session)  # a minted session may be kept alive too (UNVERIFIED)
        self.ok(None, "Session kept alive")


class SessionListHandler(LiveAvatarHandler):
    async def get(self):
        self.require_api_key()
        list_type = self.get_query_argument("type", None)
        errors = []
        if list_type is None:
            errors.append(missing(["query", "type"], None))
        elif list_type not in LIST_TYPES:
            errors.append(enum_error(["query", "type"], list_type, LIST_TYPES))
        page = self.int_query("page", 1, 1, None, errors)
        page_size = self.int_query("page_size", DEFAULT_PAGE_SIZE, 1, 100, errors)
        filters = {name: self.get_query_argument(name, None) for name in ("avatar_id", "context_id")}
        errors.extend(uuid_error(["query", name], value) for name, value in filters.items() if value)
        errors = [e for e in errors if e]
        if errors:
            raise invalid(*errors)
        # UNVERIFIED: "active" = started and not stopped, "historic" = stopped; minted sessions are in neither.
        wanted = "started" if list_type == "active" else "stopped"
        sessions = [s for s in self.emulator.sessions.values() if s.status == wanted]
        for name, value in filters.items():
            if value:
                sessions = [s for s in sessions if getattr(s, name) == canonical_uuid(value)]
        if self.get_query_argument("embed_id", None):
            sessions = []  # emulated sessions all come from the API, none from an embed
        sessions.sort(key=lambda s: s.created_at, reverse=True)  # UNVERIFIED: newest first
        first = (page - 1) * page_size
        results = [self.emulator.describe(s) for s in sessions[first:first + page_size]]
        self.ok({
            "count": len(sessions),
            "next": self.page_url(page + 1) if first + page_size < len(sessions) else None,
            "previous": self.page_url(page - 1) if page > 1 else None,
            "results": results,
        }, "Sessions retrieved")

    def int_query(self, name, default, minimum, maximum, errors):
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            errors.append({"type": "int_parsing", "loc": ["query", name],
                           "msg": "Input should be a valid integer, unable to parse string as an integer",
                           "input": raw})
            return default
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"greater than or equal to {minimum}" if value < minimum else f"less than or equal to {maximum}"
            errors.append({"type": "greater_than_equal" if value < minimum else "less_than_equal",
                           "loc": ["query", name], "msg": f"Input should be {bound}", "input": raw})
        return value

    def page_url(self, page):
        parts = urlsplit(self.request.full_url())
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "page"] + [("page", str(page))]
        return urlunsplit(parts._replace(query=urlencode(query)))


class SessionHandler(LiveAvatarHandler):
    async def get(self, session_id):
        self.require_api_key()
        session = self.find_session(session_id, ["path", "session_id"])
        self.ok(self.emulator.describe(session), "Session retrieved")


class TranscriptHandler(LiveAvatarHandler):
    async def get(self, session_id):
        self.require_api_key()
        fail_status = self.emulator.transcript_fail_status
        if fail_status:
            # UNVERIFIED error body: envelope code = status * 10 (500 -> 5000), the HTTP reason as message.
            raise error(fail_status, fail_status * 10, tornado.httputil.responses.get(fail_status, "Error"))
        session = self.find_session(session_id, ["path", "session_id"])
        errors = []
        start = self.float_query("start_timestamp", errors)
        end = self.float_query("end_timestamp", errors)
        if errors:
            raise invalid(*errors)
        entries, next_timestamp = self.emulator.transcript_page(session, start, end)
        self.ok({"session_active": session.status == "started", "next_timestamp": next_timestamp,
                 "transcript_data": entries}, "Transcript retrieved")

    def float_query(self, name, errors):
        raw = self.get_query_argument(name, None)
        if raw in (None, ""):
            return None
        try:
            return float(raw)
        except ValueError:
            errors.append({"type": "float_parsing", "loc": ["query", name],
                           "msg": "Input should be a valid number, unable to parse string as a number",
                           "input": raw})
            return None


class EventsHandler(LiveAvatarHandler):
    async def delete(self, session_id):
        """`DELETE /v1/sessions/{id}/events` (2026-05-13): hard-deletes the session's events. That the transcript goes
        with them is UNVERIFIED (docs/upstream.md#liveavatar-rest-api); the emulator deletes both."""
        self.require_api_key()
        fail_status = self.emulator.events_delete_fail_status
        if fail_status:
            raise error(fail_status, fail_status * 10, tornado.httputil.responses.get(fail_status, "Error"))
        session = self.find_session(session_id, ["path", "session_id"])
        session.events.clear()
        session.transcript.clear()
        session.events_deleted = True
        self.ok(None, "Session events deleted")
