"""HeyGen's contract served by LiveAvatar (services/heygen_on_liveavatar.py, services/rooms.py): the plugin's flow as
plugin-contract.md describes it — raw REST and the streaming.chat socket — for a customer whose Petya config says
`provider: "liveavatar"`, against the LiveAvatar emulator in a room of the sandbox's room server. Real HTTP, real
sockets, real WebRTC between the gateway's room agent and the room server."""
import asyncio
import json

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from handlers.app import Gateway
from sandbox.liveavatar import sandbox_reply
from sandbox.stack import DEMO_API_KEY
from tests.helpers.client import eventually
from tests.helpers.flows import assert_error, read_events, ws_url

WORD = 0.02  # seconds per word of the LiveAvatar avatar
ALLOWED = "https://shop.example.com"


@pytest.fixture
def bridged(sandbox):
    sandbox.liveavatar.seconds_per_word = WORD
    sandbox.petya.update_account_config(DEMO_API_KEY, provider="liveavatar")
    return sandbox


async def new_session(client, prefix="", conversation_id="bridge-conv"):
    token = await client.call(prefix + "/v1/streaming.create_token")
    assert token.status == 200, token.json
    new = await client.call(prefix + "/v1/streaming.new", {"quality": "low", "version": "v2",
                                                            "conversation_id": conversation_id},
                            headers={"Authorization": f"Bearer {token.data['token']}"}, api_key=None)
    assert new.status == 200, new.json
    return token.data["token"], new.data


async def socket(sandbox, session_id, token, prefix=""):
    """The browser's socket: answered 101 only once the gateway's own leg listens to the room agent's events."""
    ws = await websocket_connect(ws_url(sandbox, session_id, token, prefix))
    rooms = sandbox.gateway.rooms
    assert session_id in rooms.agents and rooms.agents[session_id].listeners
    return ws


def la_session(sandbox, session_id):
    return sandbox.liveavatar.sessions[session_id]


async def petya_transcript(sandbox, conversation_id):
    conversation = await eventually(lambda: sandbox.petya.get_conversation(conversation_id), timeout=10)
    return [(t["role"], t["transcript"]) for t in conversation["transcript"]]


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("prefix", ["", "/api/v1/avatar"])
async def test_heygen_flow_on_liveavatar(bridged, client, prefix):
    sandbox = bridged
    token, session = await new_session(client, prefix)
    session_id = session["session_id"]
    assert session_id in sandbox.liveavatar.sessions  # LiveAvatar serves it
    assert session["url"] == sandbox.rooms.url and session["access_token"]
    assert "livekit_agent_token" not in session and session["intro"]
    assert la_session(sandbox, session_id).status == "started"
    auth = {"Authorization": f"Bearer {token}"}

    ws = await socket(sandbox, session_id, token, prefix)  # plugin-contract.md: the socket, then streaming.start
    started = await client.call(prefix + "/v1/streaming.start", {"session_id": session_id}, headers=auth,
                                api_key=None)
    assert started.status == 200, started.json
    room = sandbox.rooms.rooms[session_id]
    assert "agent" in room.participants  # the gateway's room agent, with LiveAvatar's agent token
    repeat = await client.call(prefix + "/v1/streaming.task", {"session_id": session_id, "text": "Good morning to you",
                                                               "task_type": "repeat"}, headers=auth, api_key=None)
    assert repeat.status == 200, repeat.json
    assert repeat.json["code"] == 100 and repeat.data["task_id"] and repeat.data["duration_ms"] > 0
    events = await read_events(ws, "avatar_stop_talking")
    kinds = [e["type"] for e in events]
    assert kinds[0] == "avatar_start_talking" and "avatar_talking_message" in kinds
    end = next(e for e in events if e["type"] == "avatar_end_message")
    assert end["message"] == "Good morning to you" and end["task_id"] == repeat.data["task_id"]
    assert "".join(e["message"] for e in events if e["type"] == "avatar_talking_message") == "Good morning to you"
    commands = la_session(sandbox, session_id).commands
    assert [(c["event_type"], c["text"]) for c in commands] == [("avatar.speak_text", "Good morning to you")]

    talk = await client.call(prefix + "/v1/streaming.task", {"session_id": session_id, "text": "Where is the shop",
                                                             "task_type": "talk", "task_mode": "sync"},
                             headers=auth, api_key=None)
    assert talk.status == 200, talk.json
    events = await read_events(ws, "avatar_end_message")
    assert {"type": "user_end_message", "task_id": talk.data["task_id"], "message": "Where is the shop"} in events
    reply = next(e for e in events if e["type"] == "avatar_end_message")
    assert reply["message"] == sandbox_reply("Where is the shop")

    interrupt = await client.call(prefix + "/v1/streaming.interrupt", {"session_id": session_id}, headers=auth,
                                  api_key=None)
    assert interrupt.status == 200, interrupt.json
    keep = await client.call(prefix + "/v1/streaming.keep_alive", {"session_id": session_id}, headers=auth,
                             api_key=None)
    assert keep.status == 200, keep.json
    await eventually(lambda: la_session(sandbox, session_id).commands[-1]["event_type"] == "avatar.interrupt")

    stop = await client.call(prefix + "/v1/streaming.stop", {"session_id": session_id}, headers=auth, api_key=None)
    assert stop.status == 200, stop.json
    assert la_session(sandbox, session_id).status == "stopped"
    said = await petya_transcript(sandbox, "bridge-conv")
    assert said == [("avatar", "Good morning to you"), ("user", "Where is the shop"),
                    ("avatar", sandbox_reply("Where is the shop"))]
    await eventually(lambda: session_id not in sandbox.gateway.rooms.agents)
    assert len(sandbox.petya.deliveries("bridge-conv")) == 1
    while await asyncio.wait_for(ws.read_message(), 5) is not None:  # the socket ends with the session
        pass
    assert ws.close_code == 1000
    ws.close()
    stored = await sandbox.gateway.sessions.get(session_id)
    assert stored.end_reason == "stopped" and stored.room_holder is None  # an ended session's room has no holder


@pytest.mark.gen_test(timeout=60)
async def test_a_talk_over_the_socket_is_spoken(bridged, client):
    """HeyGen's SDK sends its default speak() as a binary pipecat TextFrame on the socket."""
    from relay.pipecat import Frame

    sandbox = bridged
    token, session = await new_session(client, conversation_id="socket-talk")
    session_id = session["session_id"]
    auth = {"Authorization": f"Bearer {token}"}
    assert (await client.call("/v1/streaming.start", {"session_id": session_id}, headers=auth,
                              api_key=None)).status == 200
    ws = await socket(sandbox, session_id, token)
    frame = Frame()
    frame.text.text = "Tell me a joke"
    await ws.write_message(frame.SerializeToString(), binary=True)
    events = await read_events(ws, "avatar_end_message")
    assert next(e for e in events if e["type"] == "avatar_end_message")["message"] == sandbox_reply("Tell me a joke")
    assert la_session(sandbox, session_id).commands[0]["event_type"] == "avatar.speak_response"
    ws.close()
    assert (await client.call("/v1/streaming.stop", {"session_id": session_id}, headers=auth,
                              api_key=None)).status == 200
    said = await petya_transcript(sandbox, "socket-talk")
    assert said == [("user", "Tell me a joke"), ("avatar", sandbox_reply("Tell me a joke"))]


@pytest.mark.gen_test(timeout=60)
async def test_a_room_the_agent_cannot_join_ends_the_start_and_the_session(bridged, client):
    sandbox = bridged
    token, session = await new_session(client, conversation_id="no-room")
    session_id = session["session_id"]
    sandbox.rooms.max_participants = 2  # the avatar and LiveAvatar's agent are in: the room refuses the gateway's
    started = await client.call("/v1/streaming.start", {"session_id": session_id},
                                headers={"Authorization": f"Bearer {token}"}, api_key=None)
    assert_error(started, 502, "room")
    assert la_session(sandbox, session_id).status == "stopped"  # no leaked billing
    stored = await sandbox.gateway.sessions.get(session_id)
    assert stored.status == "ended" and stored.end_reason == "room_unavailable"
    assert "agent" not in sandbox.rooms.rooms.get(session_id, type("R", (), {"participants": {}})).participants
    await asyncio.sleep(0)
    assert json.dumps(started.json).find(session["access_token"]) == -1


@pytest.mark.gen_test(timeout=60)
async def test_a_room_server_gone_ends_the_start_and_the_session(bridged, client):
    sandbox = bridged
    token, session = await new_session(client, conversation_id="room-gone")
    session_id = session["session_id"]
    await sandbox.rooms.close()  # the room server stops listening (LiveAvatar still thinks the room is there)
    started = await client.call("/v1/streaming.start", {"session_id": session_id},
                                headers={"Authorization": f"Bearer {token}"}, api_key=None)
    assert_error(started, 502, "room")
    assert la_session(sandbox, session_id).status == "stopped"
    assert la_session(sandbox, session_id).stop_reason == "SERVER_ERROR"
    assert session_id not in sandbox.gateway.rooms.agents
    said = await petya_transcript(sandbox, "room-gone")  # the hand-off still happens, once
    assert said == [] and len(sandbox.petya.deliveries("room-gone")) == 1


async def refused_handshake(sandbox, session_id, token):
    """The JSON error the browser's handshake was answered instead of a 101 (with the CORS headers)."""
    with pytest.raises(HTTPClientError) as refused:
        ws = await websocket_connect(HTTPRequest(ws_url(sandbox, session_id, token), headers={"Origin": ALLOWED}))
        ws.close()
    response = refused.value.response
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    return response.code, json.loads(response.body), response.headers


@pytest.mark.gen_test(timeout=60)
async def test_a_socket_while_the_room_changes_hands_is_answered_503_with_retry_after(bridged, client):
    """The room's holder is not live (a hand-over under way), or is live but holds the room no more (its internal
    socket answers 503): the browser's handshake is answered 503 + Retry-After, not 101 and 1013; once the room is
    back, the same browser's retry is relayed."""
    sandbox = bridged
    token, session = await new_session(client, conversation_id="handed-over")
    session_id = session["session_id"]
    sessions = sandbox.gateway.sessions.repository
    assert await sessions.hold_room(session_id, "a-process-gone")  # its lease expired: no address
    status, body, headers = await refused_handshake(sandbox, session_id, token)
    assert (status, body["code"], headers["Retry-After"]) == (503, 503, "2") and "handed over" in body["message"]

    other = await Gateway.build(sandbox.settings).start()  # a live process that holds the room and has no agent there
    try:
        assert await sessions.hold_room(session_id, other.leases.process_id, ("a-process-gone",))
        status, body, headers = await refused_handshake(sandbox, session_id, token)
        assert (status, headers["Retry-After"]) == (503, "2") and "handed over" in body["message"]
        assert not other.rooms.agents and not sandbox.gateway.rooms.agents
    finally:
        await other.stop()
    await sessions.release_room(session_id, other.leases.process_id)  # given back: the socket brings the agent in
    ws = await socket(sandbox, session_id, token)
    ws.close()
    await eventually(lambda: not sandbox.gateway.relays)


@pytest.mark.gen_test(timeout=60)
async def test_a_socket_whose_room_cannot_be_joined_is_answered_502(bridged, client):
    sandbox = bridged
    token, session = await new_session(client, conversation_id="no-room-socket")
    sandbox.rooms.max_participants = 2  # the avatar and LiveAvatar's agent are in: the room refuses the gateway's
    status, body, _ = await refused_handshake(sandbox, session["session_id"], token)
    assert status == 502 and "room" in body["message"]
    assert not sandbox.gateway.relays and sandbox.gateway.metrics.relay.sockets == 0


@pytest.mark.gen_test(timeout=60)
async def test_a_customer_switched_between_providers_between_two_sessions(make_sandbox):
    """PETYA_CONFIG_TTL short: the switch applies to the customer's next session; a session keeps its provider."""
    from tests.helpers.client import GatewayClient

    sandbox = await make_sandbox(PETYA_CONFIG_TTL="0.05")
    sandbox.liveavatar.seconds_per_word = WORD
    client = GatewayClient(sandbox.gateway_url)
    token1, first = await new_session(client, conversation_id="switch-1")
    assert first["session_id"] in sandbox.heygen.sessions  # the default: HeyGen
    sandbox.petya.update_account_config(DEMO_API_KEY, provider="liveavatar")
    await asyncio.sleep(0.1)
    token2, second = await new_session(client, conversation_id="switch-2")
    assert second["session_id"] in sandbox.liveavatar.sessions
    sandbox.petya.update_account_config(DEMO_API_KEY, provider="heygen")
    await asyncio.sleep(0.1)
    for token, session, conversation in ((token1, first, "switch-1"), (token2, second, "switch-2")):
        auth = {"Authorization": f"Bearer {token}"}
        sid = session["session_id"]
        assert (await client.call("/v1/streaming.start", {"session_id": sid}, headers=auth, api_key=None)).status \
            == 200
        task = await client.call("/v1/streaming.task", {"session_id": sid, "text": f"Said in {conversation}",
                                                        "task_type": "repeat", "task_mode": "sync"},
                                 headers=auth, api_key=None)
        assert task.status == 200, task.json
        assert (await client.call("/v1/streaming.stop", {"session_id": sid}, headers=auth, api_key=None)).status \
            == 200
        assert await petya_transcript(sandbox, conversation) == [("avatar", f"Said in {conversation}")]
    assert sandbox.liveavatar.sessions[second["session_id"]].commands[0]["text"] == "Said in switch-2"
    assert [t["text"] for t in sandbox.heygen.sessions[first["session_id"]].tasks] == ["Said in switch-1"]


@pytest.mark.gen_test(timeout=60)
async def test_heygen_v2_rooms_the_avatars_reply_reaches_petya_without_a_report(sandbox, client):
    """A customer on HeyGen: the gateway's agent joins HeyGen's room with the agent token streaming.new answered
    (never passed to the browser) and hears the avatar's reply to a talk; nobody reports it."""
    from sandbox.heygen import reply_for

    token, session = await new_session(client, conversation_id="v2-room")
    session_id = session["session_id"]
    assert "livekit_agent_token" not in session
    auth = {"Authorization": f"Bearer {token}"}
    assert (await client.call("/v1/streaming.start", {"session_id": session_id}, headers=auth,
                              api_key=None)).status == 200
    assert "agent" in sandbox.rooms.rooms[session_id].participants
    talk = await client.call("/v1/streaming.task", {"session_id": session_id, "text": "Do you ship abroad",
                                                    "task_type": "talk"}, headers=auth, api_key=None)
    assert talk.status == 200, talk.json
    await sandbox.heygen.wait_for_event(session_id, "avatar_stop_talking", timeout=10)
    await asyncio.sleep(0.2)  # the agent hears the room's last packets
    assert (await client.call("/v1/streaming.stop", {"session_id": session_id}, headers=auth,
                              api_key=None)).status == 200
    said = await petya_transcript(sandbox, "v2-room")
    assert said == [("user", "Do you ship abroad"), ("avatar", reply_for("talk", "Do you ship abroad"))]
    await eventually(lambda: session_id not in sandbox.gateway.rooms.agents)


@pytest.mark.gen_test(timeout=60)
async def test_heygen_room_the_agent_cannot_join_the_session_goes_on_and_the_handoff_says_so(sandbox, client):
    sandbox.rooms.max_participants = 1  # HeyGen's avatar takes the only place
    token, session = await new_session(client, conversation_id="v2-no-room")
    session_id = session["session_id"]
    auth = {"Authorization": f"Bearer {token}"}
    started = await client.call("/v1/streaming.start", {"session_id": session_id}, headers=auth, api_key=None)
    assert started.status == 200, started.json
    assert session_id not in sandbox.gateway.rooms.agents
    assert (await sandbox.gateway.sessions.get(session_id)).room_holder == "-"  # never tried again by the sweeps
    await client.call("/v1/streaming.task", {"session_id": session_id, "text": "Plain words", "task_type": "repeat"},
                      headers=auth, api_key=None)
    assert (await client.call("/v1/streaming.stop", {"session_id": session_id}, headers=auth,
                              api_key=None)).status == 200
    assert await petya_transcript(sandbox, "v2-no-room") == [("avatar", "Plain words")]
    [delivery] = sandbox.petya.deliveries("v2-no-room")
    assert "could not join HeyGen's room" in delivery["transcriptNote"]


@pytest.mark.gen_test(timeout=60)
async def test_a_full_request_that_came_back_lite_is_refused_and_stopped(bridged, client):
    """LiveAvatar reads the session's real mode into its token's claims: a context with a voice agent makes a LITE
    session, which has no agent to take HeyGen's tasks."""
    sandbox = bridged
    context = "4f1c2b7e-8a4d-4c6e-9b1a-2d3e4f5a6b7c"
    sandbox.liveavatar.known_contexts = None
    sandbox.liveavatar.lite_contexts.add(context)
    sandbox.petya.update_account_config(DEMO_API_KEY, liveAvatar={
        "avatarId": "dd73ea75-1218-4ef3-92ce-606d5f7fbc0a", "contextId": context})
    token = await client.call("/v1/streaming.create_token")
    new = await client.call("/v1/streaming.new", {"version": "v2", "conversation_id": "lite"},
                            headers={"Authorization": f"Bearer {token.data['token']}"}, api_key=None)
    assert_error(new, 502, "LITE")
    [session] = sandbox.liveavatar.sessions.values()
    assert session.status == "stopped"  # never left running


@pytest.mark.gen_test(timeout=60)
async def test_liveavatar_contract_words_are_recorded_as_they_are_said(bridged, client):
    """LiveAvatar's own contract (its web SDK commands the avatar): the gateway's agent listens in the room, so the
    words are in the gateway's record before the stop, and Petya gets each once (merged with LiveAvatar's)."""
    from clients.livekit import DataParticipant
    from domain.bridge import COMMAND_TOPIC, command
    from tests.helpers.flows import bearer, minted

    sandbox = bridged
    session_id, token = await minted(client, conversation_id="la-room")
    start = await client.call("/v1/sessions/start", api_key=None, headers=bearer(token))
    assert start.status == 201, start.json
    assert "livekit_agent_token" not in start.data
    assert "agent" in sandbox.rooms.rooms[session_id].participants
    page = DataParticipant(start.data["livekit_url"], start.data["livekit_client_token"], lambda data: None,
                           lambda reason: None)  # the page's SDK, as far as commands go
    await page.join(5)
    page.publish(json.dumps(command("avatar.speak_text", "Heard as it is said")).encode(), topic=COMMAND_TOPIC)
    turns = await eventually(lambda: sandbox.gateway.sessions.transcript(session_id), timeout=10)
    assert [(t["role"], t["transcript"], t["sources"]) for t in turns] == [
        ("avatar", "Heard as it is said", ["room"])]
    await page.leave()
    assert (await client.call("/v1/sessions/stop", api_key=None, headers=bearer(token))).status == 200
    assert await petya_transcript(sandbox, "la-room") == [("avatar", "Heard as it is said")]
    stored = await sandbox.gateway.sessions.get(session_id)
    assert stored.end_reason == "stopped"  # LiveAvatar's session.stopped echoing the stop is not the reason
    await eventually(lambda: session_id not in sandbox.gateway.rooms.agents)


@pytest.mark.gen_test(timeout=30)
async def test_the_internal_routes_exist_only_for_the_gateways_processes(sandbox, client):
    """No key, a wrong one (a customer's API key, a gateway token): a plain 404. With the key: a body that is not a
    command is a 400, and a room this process does not hold is a 503 (the caller answers its own caller 503)."""
    path = "/internal/rooms/some-session/command"
    command = {"command": {"event_id": "e1", "event_type": "avatar.speak_text", "text": "x"}}
    token = (await client.call("/v1/streaming.create_token")).data["token"]
    for headers in ({}, {"Authorization": f"Bearer {DEMO_API_KEY}"}, {"Authorization": f"Bearer {token}"}):
        assert_error(await client.call(path, command, headers=headers, api_key=None), 404)
    key = {"Authorization": f"Bearer {sandbox.gateway.rooms.key}"}
    assert_error(await client.call(path, {"command": "speak"}, headers=key, api_key=None), 400, "command")
    refused = await client.call(path, command, headers=key, api_key=None)
    assert_error(refused, 503, "handed over")
    assert refused.headers["Retry-After"]
    assert_error(await client.call("/api/v1/avatar" + path, command, headers=key, api_key=None), 404)  # root only
