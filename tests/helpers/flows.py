"""The plugin's flows that several test modules share: a HeyGen session opened and its socket connected (ws_url,
open_session, connected), the avatar's words waited for or injected (avatar_done, spoken_text, socket_says,
read_events), a LiveAvatar session minted (minted, bearer), and the shape of the gateway's JSON errors
(assert_error)."""
import asyncio
import json

from tornado.websocket import websocket_connect

from sandbox.heygen import split_into_chunks
from tests.helpers.client import eventually

# --- HeyGen -----------------------------------------------------------------------------------------------------------

WS_PARAMS = "silence_response=false&opening_text=&stt_language=en&enable_tts=true&enable_stt=false"


def ws_url(sandbox, session_id, token, prefix=""):
    base = sandbox.gateway_url.replace("http://", "ws://")
    return f"{base}{prefix}/v1/ws/streaming.chat?session_id={session_id}&session_token={token}&{WS_PARAMS}"


async def read_events(ws, until_type, count=1, timeout=5):
    """Read JSON text frames until `count` frames of type `until_type` arrived; return all read."""
    events, seen = [], 0
    while seen < count:
        message = await asyncio.wait_for(ws.read_message(), timeout)
        assert message is not None, "socket closed early"
        if isinstance(message, str):
            event = json.loads(message)
            events.append(event)
            if (event.get("type") or event.get("event_type")) == until_type:
                seen += 1
    return events


async def avatar_done(sandbox, session_id, tasks=None, timeout=10):
    """Wait until HeyGen's avatar has said (or been cut off in) the session's first `tasks` tasks (default: all
    it was given so far); returns the events it published.

    Real HeyGen v2 sends the avatar's events as LiveKit data in the session's room, not on the socket the gateway
    relays (upstream-apis §0.1), so a test waits on the emulator, not on the socket."""
    session = sandbox.heygen.sessions[session_id]
    tasks = len(session.tasks) if tasks is None else tasks
    await eventually(lambda: len(session.tasks) >= tasks and all(
        t["status"] in ("done", "interrupted") for t in session.tasks[:tasks]), timeout=timeout)
    return session.events


def spoken_text(events, task_id=None):
    """The avatar_talking_message chunks of `events` (of one task, if given), joined."""
    return "".join(e["message"] for e in events if e["type"] == "avatar_talking_message"
                   and (task_id is None or e["task_id"] == task_id))


async def socket_says(sandbox, session_id, text, kind="avatar", task_id="t-injected"):
    """Writes HeyGen's v1-style transcript events for `text` on the session's upstream socket (the gateway's
    transcript observer still reads them there). Real HeyGen v2 sends these as LiveKit data, never on the socket
    (upstream-apis §0.1): this only exercises the gateway's handling of such frames."""
    message_type, end_type = ("avatar_talking_message", "avatar_end_message") if kind == "avatar" else (
        "user_talking_message", "user_end_message")
    if kind == "avatar":
        await sandbox.heygen.send_on_socket(session_id, {"type": "avatar_start_talking", "task_id": task_id})
    for chunk in split_into_chunks(text):
        await sandbox.heygen.send_on_socket(session_id, {"type": message_type, "task_id": task_id, "message": chunk})
    await sandbox.heygen.send_on_socket(session_id, {"type": end_type, "task_id": task_id})


async def open_session(client, prefix="", conversation_id="conv-1"):
    token = await client.call(prefix + "/v1/streaming.create_token")
    assert token.status == 200, token.json
    new = await client.call(prefix + "/v1/streaming.new",
                            {"quality": "medium", "version": "v2", "conversation_id": conversation_id})
    assert new.status == 200, new.json
    return token.data["token"], new.data


async def connected(sandbox, client, **kwargs):
    """A new, started session with the browser's socket open and relayed: (session_id, token, socket). The gateway
    answers the browser's handshake only once HeyGen's socket is connected, so HeyGen's side is there already."""
    token, session = await open_session(client)
    ws = await websocket_connect(ws_url(sandbox, session["session_id"], token), **kwargs)
    assert sandbox.heygen.sessions[session["session_id"]].sockets
    await client.call("/v1/streaming.start", {"session_id": session["session_id"]})
    return session["session_id"], token, ws


# --- LiveAvatar -------------------------------------------------------------------------------------------------------

async def minted(client, conversation_id="la-conv-1", prefix=""):
    reply = await client.call(prefix + "/v1/sessions/token", {"conversation_id": conversation_id})
    assert reply.status == 200, reply.json
    assert reply.json["code"] == 1000
    return reply.data["session_id"], reply.data["session_token"]


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


# --- errors -----------------------------------------------------------------------------------------------------------

def assert_error(reply, status, *words):
    assert reply.status == status, (reply.status, reply.raw)
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.json["code"] == status and isinstance(reply.json["message"], str)
    for word in words:
        assert word in reply.json["message"], reply.json
    assert b"Traceback" not in reply.raw
