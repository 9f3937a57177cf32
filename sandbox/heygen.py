"""HeyGen Streaming API emulator (v1 paths, LiveKit-era sessions) for tests and sandbox mode.

Facts come from docs/upstream.md (HeyGen REST API, realtime channels, web SDK); every choice it leaves open is marked
UNVERIFIED. As upstream v2 does (docs/upstream.md#heygen-room-data), each session has a LiveKit room on the sandbox's
room server (sandbox/livekit/): `streaming.new` answers its `url` and a client `access_token`, `streaming.start` seats
the synthetic avatar (sandbox/avatar.py) there as participant `heygen`, and the avatar and user events
(avatar_start_talking, avatar_talking_message, avatar_end_message, avatar_stop_talking, user_talking_message,
user_end_message) travel as LiveKit data from `heygen` (JSON with `type`, no topic). The streaming.chat WebSocket
carries only user_start / user_stop server->client and the client's binary protobuf frames (a TextFrame is a talk).
Standalone (rooms=None, e.g. bench/run.py) there is no room: the events are only recorded in `session.events`.
"""
import asyncio
import base64
import collections
import json
import re
import secrets
import time
from dataclasses import dataclass, field

import tornado.ioloop
import tornado.web
import tornado.websocket

from relay.pipecat import Frame as PipecatFrame
from sandbox.avatar import Avatar
from sandbox.common import EmulatorHandler, Recorder, new_id

DEFAULT_AVATARS = ("Katya_Chair_Sitting_public", "Wayne_20240711", "Anna_public_3_20240108")
DEFAULT_ACTIVITY_IDLE_TIMEOUT = 120  # seconds (upstream default of activity_idle_timeout)
SESSION_DURATION_LIMIT = 600
LIVEKIT_URL = "wss://heygen-sandbox.livekit.cloud"  # only without a room server (rooms=None): nothing listens there
AVATAR_IDENTITY = "heygen"  # the avatar's participant identity (UNVERIFIED: docs/upstream.md#heygen-room-data)
CLIENT_IDENTITY = "client"  # UNVERIFIED: the identity upstream's access_token carries
AGENT_IDENTITY = "agent"  # UNVERIFIED: the identity (and grants) of upstream's livekit_agent_token
REALTIME_ENDPOINT = "wss://webrtc-signaling.heygen.io/v2-alpha/interactive-avatar/session/{}"
TASK_TYPES = ("repeat", "talk", "chat")
TASK_MODES = ("sync", "async")
WORDS_PER_CHUNK = 3
MS_PER_WORD = 400  # UNVERIFIED: duration_ms is an estimate at ~150 words per minute
USER_STOP_AFTER = 0.3  # seconds without mic frames before user_stop
MAX_WS_MESSAGE_SIZE = 16 * 1024 * 1024
WS_CLOSE_NORMAL = 1000  # UNVERIFIED: close code upstream uses on stop and idle timeout

UNAUTHORIZED = {"code": 400112, "message": "Unauthorized"}
AVATAR_NOT_FOUND = {"code": 10013, "message": "avatar not found"}
# HeyGen rejects avatars of versions v1/v2 (docs/upstream.md#heygen-errors); the HTTP status 400 is UNVERIFIED.
AVATAR_DEPRECATED = {"code": 10003, "message": "avatar version is deprecated, please update to v3+",
                     "details": "invalid avatar"}
DEPRECATED_AVATARS = ("Tyler-incasualsuit-20220721", "Susan_public_2_20240328")  # stand-ins for v1/v2 avatars
WRONG_STATE = {"code": 400006, "message": "Session is not in correct state"}
SUCCESS = {"code": 100, "message": "success"}


def session_not_found(session_id):
    return {"code": 400004, "message": f"Session does not exist. SessionID: {session_id}"}


def missing_parameters(names):
    return {"code": 40001, "message": "Missing required parameters: " + ", ".join(names)}


def invalid_parameter(name):
    # UNVERIFIED: code 400175 is INVALID_PARAMETER in HeyGen's error table; the message wording is ours.
    return {"code": 400175, "message": f"Invalid parameter: {name}"}


def concurrent_limit(limit):
    # UNVERIFIED: upstream's concurrency error is only known as "a plain 400"; code and message are ours.
    return {"code": 10004, "message": f"Concurrent limit reached: at most {limit} sessions at a time"}


def split_into_chunks(text, words_per_chunk=WORDS_PER_CHUNK):
    """Word groups that concatenate back to `text` exactly (whitespace kept with the following word)."""
    words = re.findall(r"\s*\S+", text)
    chunks = ["".join(words[i:i + words_per_chunk]) for i in range(0, len(words), words_per_chunk)]
    trailing = text[sum(len(word) for word in words):]
    if trailing:
        if chunks:
            chunks[-1] += trailing
        else:
            chunks.append(trailing)
    return chunks


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _opaque_token():
    """Looks like upstream's session tokens (base64 of a JSON object, "eyJ0b2tlbi..."), padding-free so it
    survives an unencoded query string."""
    claims = {"token": new_id(), "token_type": "sandbox", "created_at": int(time.time())}
    return _b64url(json.dumps(claims, separators=(",", ":")).encode())


def _jwt_like(claims):
    header = {"alg": "HS256", "typ": "JWT"}
    return ".".join([_b64url(json.dumps(header).encode()), _b64url(json.dumps(claims).encode()),
                     _b64url(secrets.token_bytes(32))])


def reply_for(task_type, text):
    """What the avatar says: repeat speaks the text; talk/chat a deterministic stand-in for the LLM answer."""
    return text if task_type == "repeat" else f"You said \"{text}\". I am the sandbox avatar."


@dataclass
class EmulatedSession:
    """One streaming session: status "new" -> "connected" (streaming.start) -> "closed".

    Upstream also reports "connecting" while the avatar joins its LiveKit room; the emulator connects at once.
    """
    session_id: str
    token: str | None  # the session token that created it; None when created with the API key
    avatar_id: str
    body: dict
    activity_idle_timeout: int
    status: str = "new"
    created_at: float = field(default_factory=time.time)
    last_activity: float = field(default_factory=time.monotonic)
    tasks: list = field(default_factory=list)  # every streaming.task, in order (dicts, see enqueue_task)
    ws_received: list = field(default_factory=list)  # (is_binary, payload) per frame received
    closed_reason: str | None = None  # "stopped" | "idle_timeout"
    sockets: set = field(default_factory=set)
    ws_closes: list = field(default_factory=list)  # (code, reason) the peer sent when closing, per socket
    ws_pings: int = 0  # pings received from the peer (the gateway keeps its leg alive)
    pending: collections.deque = field(default_factory=collections.deque)  # tasks waiting to be spoken
    speaker: asyncio.Task | None = None
    speaking: dict | None = None
    room: object = None  # sandbox.livekit.Room of the session (None without a room server)
    avatar: Avatar | None = None  # the synthetic avatar, once streaming.start seated it in the room
    participant: object = None  # its ServerParticipant, identity "heygen"
    events: list = field(default_factory=list)  # every data message the avatar published (or would have), in order
    room_data: list = field(default_factory=list)  # sandbox.livekit.ReceivedData the avatar heard in the room


class HeyGenEmulator:
    """A HeyGen Streaming API on a tornado app; state in memory, every request recorded."""

    def __init__(self, api_key="sandbox-heygen-key", max_sessions=3, chunk_delay=0.005,
                 known_avatars=DEFAULT_AVATARS, idle_timeout=None, response_delay=0.0, rooms=None,
                 seconds_per_word=None):
        self.api_key = api_key
        self.rooms = rooms  # sandbox.livekit.RoomServer where the sessions' rooms live, or None
        # The avatar's pace in a room (None: sandbox.avatar's natural ~170 words a minute); tests speed it up.
        # Without a room, chunk_delay paces the recorded events instead.
        self.seconds_per_word = seconds_per_word
        self.max_sessions = max_sessions
        self.chunk_delay = chunk_delay
        self.known_avatars = tuple(known_avatars)
        self.deprecated_avatars = DEPRECATED_AVATARS
        self.idle_timeout = idle_timeout  # overrides each session's activity_idle_timeout when set
        self.response_delay = response_delay
        self.recorder = Recorder()
        self.on_task = None  # tests: `f(session, body)` called after a task is queued, before the answer
        # tests: `async f(session)` awaited before a socket's handshake is answered: None goes on, (status, body)
        # refuses it; one that never returns is an upstream that accepted the connection and never answers.
        self.on_socket_handshake = None
        # tests: `f(socket)` called once a socket is open and registered, before anything it receives is read (a
        # message written then goes out right behind the 101).
        self.on_socket_open = None
        self.sessions = {}
        self.tokens = {}
        self._idle_sweeper = None
        self._background = set()

    def make_app(self):
        kwargs = {"emulator": self}
        return tornado.web.Application([
            (r"/v1/streaming\.create_token", CreateTokenHandler, kwargs),
            (r"/v1/streaming\.new", NewSessionHandler, kwargs),
            (r"/v1/streaming\.start", StartHandler, kwargs),
            (r"/v1/streaming\.task", TaskHandler, kwargs),
            (r"/v1/streaming\.interrupt", InterruptHandler, kwargs),
            (r"/v1/streaming\.(?:keep_alive|start_listening|stop_listening)", AcknowledgeHandler, kwargs),
            (r"/v1/streaming\.stop", StopHandler, kwargs),
            (r"/v1/streaming\.list", ListHandler, kwargs),
            (r"/v1/ws/streaming\.chat", StreamingChatSocket, kwargs),
            (r".*", UnknownPathHandler, kwargs),
        ], websocket_max_message_size=MAX_WS_MESSAGE_SIZE)

    def active_sessions(self):
        return [session for session in self.sessions.values() if session.status != "closed"]

    def stop(self):
        """Cancels background work: the idle sweeper, speech and voice-activity timers."""
        if self._idle_sweeper is not None:
            self._idle_sweeper.stop()
            self._idle_sweeper = None
        for task in list(self._background):
            task.cancel()

    def issue_token(self):
        token = _opaque_token()
        self.tokens[token] = {"used_by": None, "created_at": time.time()}
        return token

    def create_session(self, body, token, avatar_id, activity_idle_timeout):
        session = EmulatedSession(session_id=new_id(), token=token, avatar_id=avatar_id, body=body,
                                  activity_idle_timeout=activity_idle_timeout)
        self.sessions[session.session_id] = session
        if token is not None:
            self.tokens[token]["used_by"] = session.session_id
        self._start_idle_sweeper()
        return session

    def may_join(self, session, token):
        """Whether `token` opens a socket on `session`: its creating token, or any issued one for API-key sessions."""
        if session.status == "closed":
            return False
        return token == session.token if session.token is not None else token in self.tokens

    def close_session(self, session, reason):
        session.status = "closed"
        session.closed_reason = reason
        self._cancel_speech(session)
        self._close_sockets(session, WS_CLOSE_NORMAL, reason)
        if session.room is not None:  # every participant leaves (clients get ROOM_DELETED)
            room, session.participant = session.room, None
            self.spawn(room.close())

    def open_room(self, session):
        """The session's room (named after it) on the room server; None without one."""
        if self.rooms is None:
            return None
        session.room = self.rooms.room(session.session_id)
        return session.room

    async def seat_avatar(self, session):
        """streaming.start: the synthetic avatar joins the session's room as `heygen`, publishing video and audio."""
        if session.room is None or session.avatar is not None:
            return
        kwargs = {} if self.seconds_per_word is None else {"seconds_per_word": self.seconds_per_word}
        session.avatar = Avatar(name=session.avatar_id, **kwargs)
        session.participant = await session.avatar.join(
            session.room, identity=AVATAR_IDENTITY, on_data=lambda received: self._hear_room_data(session, received))

    def _hear_room_data(self, session, received):
        """Data sent to the avatar in the room. The SDK with the LiveKit transport publishes a talk as a JSON string
        (docs/upstream.md#heygen-room-data); push_to_talk:start|stop are only recorded."""
        session.room_data.append(received)
        try:
            text = json.loads(received.payload.decode())
        except ValueError:
            return
        if isinstance(text, str) and not text.startswith("push_to_talk:") and session.status == "connected":
            session.last_activity = time.monotonic()
            self.enqueue_task(session, text, "talk", "async")

    def publish(self, session, message):
        """One event as LiveKit data from `heygen` (JSON with `type`, no topic, reliable), recorded in
        session.events; without a room (or before the avatar joined) it is only recorded."""
        session.events.append(message)
        participant = session.participant
        if participant is not None and not participant.left:
            participant.publish_data(json.dumps(message))

    async def wait_for_event(self, session_id, event_type, count=1, timeout=5):
        """Tests: wait until `count` events of `event_type` were published in the session; returns all its events."""
        session = self.sessions[session_id]
        deadline = time.monotonic() + timeout
        while sum(1 for e in session.events if e.get("type") == event_type) < count:
            if time.monotonic() > deadline:
                seen = [e.get("type") for e in session.events]
                raise TimeoutError(f"{count} x {event_type} not published; got {seen}")
            await asyncio.sleep(0.01)
        return list(session.events)

    async def send_on_socket(self, session_id, message):
        """Tests and bench: write `message` (JSON) on the session's streaming.chat sockets, as if upstream sent it
        there. Real HeyGen v2 sends only user_start / user_stop / user_silence on the socket; the avatar and user
        transcript events travel as LiveKit data (see publish)."""
        await self._broadcast(self.sessions[session_id], message)

    def _start_idle_sweeper(self):
        """One periodic check for all sessions, started with the first session (the IOLoop is running then).

        Its period follows the idle_timeout in force at that moment."""
        if self._idle_sweeper is not None:
            return
        period = 1.0 if self.idle_timeout is None else min(1.0, self.idle_timeout / 4)
        self._idle_sweeper = tornado.ioloop.PeriodicCallback(self._close_idle_sessions, period * 1000)
        self._idle_sweeper.start()

    def _close_idle_sessions(self):
        now = time.monotonic()
        for session in self.active_sessions():
            limit = self.idle_timeout if self.idle_timeout is not None else session.activity_idle_timeout
            if now - session.last_activity >= limit:
                self.close_session(session, "idle_timeout")

    def enqueue_task(self, session, text, task_type, task_mode):
        """Records the task and queues it; the session's speaker says queued tasks one at a time, in order."""
        spoken = reply_for(task_type, text)
        task = {"task_id": new_id(), "text": text, "task_type": task_type, "task_mode": task_mode,
                "spoken": spoken, "duration_ms": max(1, len(spoken.split())) * MS_PER_WORD, "status": "queued"}
        session.tasks.append(task)
        session.pending.append(task)
        if session.speaker is None or session.speaker.done():
            session.speaker = self.spawn(self._speak_pending(session))
        return task

    async def _speak_pending(self, session):
        while session.pending:
            task = session.pending.popleft()
            task["status"] = "speaking"
            session.speaking = task
            task_id = task["task_id"]
            self.publish(session, {"type": "avatar_start_talking", "task_id": task_id})
            if session.avatar is not None:  # the words go out as the avatar says them, one chunk a word
                def on_word(index, word, task_id=task_id):
                    self.publish(session, {"type": "avatar_talking_message", "task_id": task_id,
                                           "message": word if index == 0 else " " + word})
                finished = await session.avatar.speak(task["spoken"], on_word=on_word)
            else:
                for chunk in split_into_chunks(task["spoken"]):
                    await asyncio.sleep(self.chunk_delay)
                    self.publish(session, {"type": "avatar_talking_message", "task_id": task_id, "message": chunk})
                finished = True
            if not finished:  # cut short by the avatar itself; interrupt() publishes avatar_stop_talking
                return
            self.publish(session, {"type": "avatar_end_message", "task_id": task_id})
            # UNVERIFIED for v2: duration_ms in avatar_stop_talking (SDK README 1.0.15, v1 era).
            self.publish(session, {"type": "avatar_stop_talking", "task_id": task_id,
                                   "duration_ms": task["duration_ms"]})
            task["status"] = "done"
            session.speaking = None

    async def interrupt(self, session):
        """Drops queued speech and cuts the current one short with avatar_stop_talking (no avatar_end_message)."""
        cut = self._cancel_speech(session)
        if cut is not None:
            self.publish(session, {"type": "avatar_stop_talking", "task_id": cut["task_id"],
                                   "duration_ms": cut["duration_ms"]})

    def _cancel_speech(self, session):
        """Stops the speaker and marks unfinished tasks "interrupted"; returns the task being spoken, if any."""
        cut = session.speaking
        for task in [cut, *session.pending]:
            if task is not None:
                task["status"] = "interrupted"
        session.pending.clear()
        session.speaking = None
        if session.speaker is not None:
            session.speaker.cancel()
            session.speaker = None
        return cut

    async def user_says(self, session_id, text):
        """Publishes the user's words in the room as upstream's STT would (user_talking_message chunks, then
        user_end_message); returns the task_id used. UNVERIFIED: upstream's chunking of the user's words."""
        session = self.sessions[session_id]
        task_id = new_id()
        for chunk in split_into_chunks(text):
            await asyncio.sleep(self.chunk_delay)
            self.publish(session, {"type": "user_talking_message", "task_id": task_id, "message": chunk})
        self.publish(session, {"type": "user_end_message", "task_id": task_id})
        return task_id

    async def drop_sockets(self, session_id, code=1000, reason=""):
        """Closes the session's sockets from the server side and waits for their closing handshakes."""
        sockets = self._close_sockets(self.sessions[session_id], code, reason)
        await asyncio.gather(*(socket.closed.wait() for socket in sockets))

    def _close_sockets(self, session, code, reason):
        sockets = list(session.sockets)
        session.sockets.clear()
        for socket in sockets:
            socket.close(code, reason)
        return sockets

    async def _broadcast(self, session, message):
        """Writes `message` on the session's sockets (send_on_socket; bench/run.py calls it directly)."""
        for socket in list(session.sockets):
            await socket.send_json(message)

    def spawn(self, coroutine):
        """Runs `coroutine` as background work that stop() cancels."""
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task


class HeyGenHandler(EmulatorHandler):
    """Records the request, waits response_delay, then authenticates.

    After prepare(), `by_api_key` tells whether x-api-key matched and `token` holds the issued Bearer token (or None).
    """
    api_key_only = False

    async def prepare(self):
        super().prepare()
        if self.emulator.response_delay > 0:
            await asyncio.sleep(self.emulator.response_delay)
        self.by_api_key = self.request.headers.get("x-api-key") == self.emulator.api_key
        bearer = self.bearer()
        self.token = bearer if bearer in self.emulator.tokens else None
        if not (self.by_api_key or (self.token is not None and not self.api_key_only)):
            self.reply(401, UNAUTHORIZED)

    def write_error(self, status_code, **kwargs):
        # UNVERIFIED: body of upstream's framework errors (405, 500).
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"code": status_code, "message": self._reason}))


class CreateTokenHandler(HeyGenHandler):
    api_key_only = True

    async def post(self):
        self.reply(200, {"error": None, "data": {"token": self.emulator.issue_token()}})


class NewSessionHandler(HeyGenHandler):
    async def post(self):
        # UNVERIFIED: with both a valid x-api-key and a Bearer token, the API key wins and the token stays unused.
        token = None if self.by_api_key else self.token
        if token is not None and self.emulator.tokens[token]["used_by"] is not None:
            self.reply(401, UNAUTHORIZED)
            return
        body = self.json_body()
        if body is None:
            self.reply(400, invalid_parameter("body"))
            return
        # UNVERIFIED: the SDK makes the avatar optional; we assume upstream then picks a default avatar.
        avatar_id = body.get("avatar_id") or body.get("avatar_name") or self.emulator.known_avatars[0]
        if avatar_id in self.emulator.deprecated_avatars:
            self.reply(400, AVATAR_DEPRECATED)
            return
        if avatar_id not in self.emulator.known_avatars:
            self.reply(400, AVATAR_NOT_FOUND)
            return
        idle_timeout = body.get("activity_idle_timeout", DEFAULT_ACTIVITY_IDLE_TIMEOUT)
        if type(idle_timeout) is not int or not 30 <= idle_timeout <= 3600:  # documented range
            self.reply(400, invalid_parameter("activity_idle_timeout"))
            return
        if len(self.emulator.active_sessions()) >= self.emulator.max_sessions:
            self.reply(400, concurrent_limit(self.emulator.max_sessions))
            return
        # UNVERIFIED: a token is used up only by a successful streaming.new.
        session = self.emulator.create_session(body, token, avatar_id, idle_timeout)
        room = self.emulator.open_room(session)
        self.reply(200, {**SUCCESS, "data": self.session_info(session.session_id, self.emulator.rooms
                                                              if room is not None else None)})

    @staticmethod
    def session_info(session_id, rooms=None):
        """The LiveKit-era ("v2") answer; the emulator answers it whatever `version` asks (v1 is gone upstream).
        With a room server (`rooms`), `url` is its address and the tokens are real LiveKit JWTs for the session's
        room (named after the session); without one, look-alikes pointing nowhere."""
        if rooms is not None:
            url = rooms.url
            access_token = rooms.token(session_id, CLIENT_IDENTITY, ttl=SESSION_DURATION_LIMIT)
            agent_token = rooms.token(session_id, AGENT_IDENTITY, ttl=SESSION_DURATION_LIMIT)
        else:
            expires = int(time.time()) + SESSION_DURATION_LIMIT
            url = LIVEKIT_URL
            access_token = _jwt_like({"sub": CLIENT_IDENTITY, "exp": expires,
                                      "video": {"room": session_id, "roomJoin": True}})
            agent_token = _jwt_like({"sub": AGENT_IDENTITY, "exp": expires,
                                     "video": {"room": session_id, "roomJoin": True, "agent": True}})
        return {
            "session_id": session_id,
            "url": url,
            "access_token": access_token,
            "is_paid": True,
            "session_duration_limit": SESSION_DURATION_LIMIT,
            "sdp": None,
            "ice_servers": None,
            "ice_servers2": None,
            "realtime_endpoint": REALTIME_ENDPOINT.format(session_id),
            # UNVERIFIED that upstream always returns it (pipecat requires it, docs/upstream.md#heygen-rest-api).
            "livekit_agent_token": agent_token,
        }


class SessionCallHandler(HeyGenHandler):
    """A POST naming one live session by session_id; refreshes its idle timer, then `act` answers."""
    required = ("session_id",)

    async def post(self):
        body = self.json_body()
        if body is None:
            self.reply(400, invalid_parameter("body"))
            return
        missing = [name for name in self.required if not (isinstance(body.get(name), str) and body[name])]
        if missing:
            self.reply(400, missing_parameters(missing))
            return
        session = self.emulator.sessions.get(body["session_id"])
        if session is None or session.status == "closed":
            self.reply(400, session_not_found(body["session_id"]))
            return
        session.last_activity = time.monotonic()
        await self.act(session, body)


class StartHandler(SessionCallHandler):
    async def act(self, session, body):
        if session.status != "new":
            self.reply(400, WRONG_STATE)
            return
        session.status = "connected"
        # UNVERIFIED: upstream reports "connecting" while its avatar joins; here start answers once it has joined.
        await self.emulator.seat_avatar(session)
        # UNVERIFIED: upstream's start answer (docs mention a status; the SDK ignores the data).
        self.reply(200, {**SUCCESS, "data": None})


class TaskHandler(SessionCallHandler):
    required = ("session_id", "text")

    async def act(self, session, body):
        if session.status != "connected":
            self.reply(400, WRONG_STATE)
            return
        # HeyGen's docs give "repeat" as the default task_type (the gateway records it so); the SDK's default
        # speak() sends none when no socket is open. UNVERIFIED which one real HeyGen applies.
        task_type = body.get("task_type", "repeat")
        task_mode = body.get("task_mode", "sync")
        if task_type not in TASK_TYPES:
            self.reply(400, invalid_parameter("task_type"))
            return
        if task_mode not in TASK_MODES:
            self.reply(400, invalid_parameter("task_mode"))
            return
        # UNVERIFIED: a "sync" task may answer only once spoken upstream; here every task answers at once.
        task = self.emulator.enqueue_task(session, body["text"], task_type, task_mode)
        if self.emulator.on_task is not None:  # tests: a fault injected once HeyGen has performed the task
            self.emulator.on_task(session, body)
        self.reply(200, {**SUCCESS, "data": {"task_id": task["task_id"], "duration_ms": task["duration_ms"]}})


class InterruptHandler(SessionCallHandler):
    async def act(self, session, body):
        await self.emulator.interrupt(session)
        self.reply(200, SUCCESS)


class AcknowledgeHandler(SessionCallHandler):
    """keep_alive, and the SDK's start_listening / stop_listening (UNVERIFIED bodies): only refresh the idle timer."""

    async def act(self, session, body):
        self.reply(200, SUCCESS)


class StopHandler(SessionCallHandler):
    async def act(self, session, body):
        self.emulator.close_session(session, "stopped")
        self.reply(200, {**SUCCESS, "data": {"status": "success"}})


class ListHandler(HeyGenHandler):
    async def get(self):
        sessions = [{"session_id": s.session_id, "status": s.status, "created_at": int(s.created_at),
                     "api_key_type": "api"} for s in self.emulator.active_sessions()]
        self.reply(200, {**SUCCESS, "data": {"sessions": sessions}})


class UnknownPathHandler(EmulatorHandler):
    """Records requests to paths HeyGen does not have, so tests can see them."""

    def prepare(self):
        super().prepare()
        self.reply(404, {"code": 404, "message": "Not Found"})  # UNVERIFIED body


class StreamingChatSocket(tornado.websocket.WebSocketHandler):
    """/v1/ws/streaming.chat: records what the client sends and plays HeyGen's voice-activity events.

    Binary frames are the SDK's protobuf `pipecat.Frame`s: a TextFrame is a talk task (the avatar answers in the
    room), anything else counts as microphone audio (user_start / user_stop). Text frames are only recorded
    (UNVERIFIED what upstream does with them)."""

    def initialize(self, emulator):
        self.emulator = emulator
        self.session = None
        self.last_audio_at = 0.0
        self.voice_watch = None
        self.closed = asyncio.Event()

    async def prepare(self):
        self.emulator.recorder.record(self.request)
        session = self.emulator.sessions.get(self.get_query_argument("session_id", ""))
        if session is None or not self.emulator.may_join(session, self.get_query_argument("session_token", "")):
            self._refuse(401, UNAUTHORIZED)
            return
        if self.emulator.on_socket_handshake is not None:  # tests: a refusal, or a handshake never answered
            refusal = await self.emulator.on_socket_handshake(session)
            if refusal is not None:
                self._refuse(*refusal)
                return
        self.session = session

    def _refuse(self, status, body):
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def check_origin(self, origin):
        return True  # the SDK connects straight from the web page, whatever its origin

    def open(self):
        self.session.sockets.add(self)
        if self.emulator.on_socket_open is not None:
            self.emulator.on_socket_open(self)

    def on_ping(self, data):
        self.session.ws_pings += 1

    def on_message(self, message):
        is_binary = isinstance(message, bytes)
        self.session.ws_received.append((is_binary, message))
        if not is_binary:
            return
        text = self._text_of(message)
        if text is None:
            self._hear_audio()
        elif text.strip() and self.session.status == "connected":  # UNVERIFIED: an empty or early text is dropped
            self.session.last_activity = time.monotonic()
            self.emulator.enqueue_task(self.session, text, "talk", "async")

    @staticmethod
    def _text_of(message):
        """The text of a pipecat TextFrame; None for audio and for bytes that are no Frame."""
        if not message or message[0] != 0x0A:  # Frame.text's tag: audio, dozens of frames a second, is not parsed
            return None
        try:
            frame = PipecatFrame.FromString(message)
        except Exception:
            return None
        return frame.text.text if frame.WhichOneof("frame") == "text" else None

    def on_close(self):
        if self.session is not None:  # None when the handshake was refused
            self.session.sockets.discard(self)
            self.session.ws_closes.append((self.close_code, self.close_reason))
        if self.voice_watch is not None:
            self.voice_watch.cancel()
        self.closed.set()

    async def send_json(self, message):
        try:
            await self.write_message(json.dumps(message))
        except tornado.websocket.WebSocketClosedError:
            pass  # the peer is gone; on_close tidies up

    def _hear_audio(self):
        self.last_audio_at = time.monotonic()
        if self.voice_watch is None:
            self.voice_watch = self.emulator.spawn(self._watch_user_speech())

    async def _watch_user_speech(self):
        """user_start now, user_stop once mic frames pause for USER_STOP_AFTER seconds.

        UNVERIFIED: upstream runs voice activity detection on the audio; here any binary frame counts as speech.
        """
        await self.send_json({"event_type": "user_start"})
        while (quiet_left := self.last_audio_at + USER_STOP_AFTER - time.monotonic()) > 0:
            await asyncio.sleep(quiet_left)
        self.voice_watch = None  # before sending, so a frame arriving meanwhile starts a new user_start
        await self.send_json({"event_type": "user_stop"})
