"""The LiveAvatar API emulator, over real HTTP."""
import asyncio
import json
import time
import uuid

import pytest

from sandbox.liveavatar import DEFAULT_AVATAR_ID, LiveAvatarEmulator

API_KEY = "test-liveavatar-key"
CONTEXT_ID = "5a2e9c1d-7f3b-4e8a-b6d0-2c4f8e1a9b37"
VOICE_ID = "c2527536-6d1f-4412-a643-53a3497dada9"


@pytest.fixture
def emulator():
    emulator = LiveAvatarEmulator(api_key=API_KEY, known_contexts={CONTEXT_ID}, transcript_page_size=3)
    yield emulator
    emulator.stop()


@pytest.fixture
def app(emulator):
    return emulator.make_app()


def token_body(**changes):
    body = {"mode": "FULL", "avatar_id": DEFAULT_AVATAR_ID,
            "avatar_persona": {"voice_id": VOICE_ID, "context_id": CONTEXT_ID, "language": "en"}}
    return body | changes


def key_headers(key=API_KEY):
    return {"X-API-KEY": key, "Content-Type": "application/json"}


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def call(http_client, base_url):
    async def call(method, path, body=None, headers=None):
        """(status, parsed JSON) of one request; dict bodies are sent as JSON, str bodies as they are."""
        payload = json.dumps(body) if isinstance(body, dict) else body
        if method == "POST" and payload is None:
            payload = b""
        response = await http_client.fetch(base_url + path, method=method, body=payload, headers=headers or {},
                                           raise_error=False)
        return response.code, json.loads(response.body)
    return call


@pytest.fixture
def mint(call):
    async def mint(**changes):
        code, body = await call("POST", "/v1/sessions/token", token_body(**changes), key_headers())
        assert code == 200, body
        return body["data"]["session_id"], body["data"]["session_token"]
    return mint


@pytest.fixture
def start(call, mint):
    async def start(**changes):
        session_id, token = await mint(**changes)
        code, body = await call("POST", "/v1/sessions/start", headers=bearer(token))
        assert code == 201, body
        return session_id, token
    return start


@pytest.mark.gen_test
async def test_token_mints_a_session(emulator, call):
    code, body = await call("POST", "/v1/sessions/token", token_body(), {"x-api-key": API_KEY})
    assert code == 200
    assert (body["code"], body["message"]) == (1000, "Session token created")
    session_id, token = body["data"]["session_id"], body["data"]["session_token"]
    assert str(uuid.UUID(session_id)) == session_id
    assert token.count(".") == 2 and token.startswith("eyJ")
    session = emulator.sessions[session_id]
    assert (session.status, session.token, session.body) == ("minted", token, token_body())
    assert emulator.recorder.calls("/v1/sessions/token", "POST")[0].json() == token_body()


@pytest.mark.gen_test
async def test_token_accepts_null_voice_and_context(call):
    body = token_body(avatar_persona={"voice_id": None, "context_id": None, "language": "en"})
    code, reply = await call("POST", "/v1/sessions/token", body, key_headers())
    assert code == 200, reply


@pytest.mark.parametrize("body, loc", [
    ("{not json", ["body", 1]),
    ("", ["body"]),
    ({"avatar_id": DEFAULT_AVATAR_ID, "avatar_persona": {}}, ["body", "mode"]),
    ({"mode": "FULL", "avatar_persona": {}}, ["body", "avatar_id"]),
    ({"mode": "FULL", "avatar_id": DEFAULT_AVATAR_ID}, ["body", "avatar_persona"]),
    (token_body(avatar_id="Anna_public"), ["body", "avatar_id"]),
    (token_body(avatar_persona={"voice_id": "voice-9"}), ["body", "avatar_persona", "voice_id"]),
    (token_body(avatar_persona={"context_id": 42}), ["body", "avatar_persona", "context_id"]),
    (token_body(mode="HALF"), ["body", "mode"]),
])
@pytest.mark.gen_test
async def test_token_rejects_bad_bodies_with_fastapi_422(emulator, call, body, loc):
    code, reply = await call("POST", "/v1/sessions/token", body, key_headers())
    assert code == 422
    assert [detail["loc"] for detail in reply["detail"]] == [loc]
    assert {"type", "msg", "input"} <= reply["detail"][0].keys()
    assert emulator.sessions == {}


@pytest.mark.gen_test
async def test_token_reports_unknown_context_and_avatar(emulator, call):
    body = token_body(avatar_persona={"context_id": str(uuid.uuid4())})
    assert await call("POST", "/v1/sessions/token", body, key_headers()) == (400, {
        "code": 4000, "data": [{"loc": ["context_id"], "message": "Context not found", "params": {}}],
        "message": "Errors validating session token"})
    code, reply = await call("POST", "/v1/sessions/token", token_body(avatar_id=str(uuid.uuid4())), key_headers())
    assert (code, reply["code"], reply["data"][0]["message"]) == (400, 4000, "Avatar not found")
    assert emulator.sessions == {}


@pytest.mark.gen_test
async def test_token_needs_the_api_key(call, mint):
    _, token = await mint()
    unauthorized = (401, {"code": 4001, "message": "Unauthorized", "data": None})
    assert await call("POST", "/v1/sessions/token", token_body(), {}) == unauthorized
    assert await call("POST", "/v1/sessions/token", token_body(), key_headers("wrong")) == unauthorized
    assert await call("POST", "/v1/sessions/token", token_body(), bearer(token)) == unauthorized


@pytest.mark.gen_test
async def test_start_takes_the_bearer_token_only(emulator, call, mint):
    session_id, token = await mint()
    code, reply = await call("POST", "/v1/sessions/start", headers=key_headers())
    assert (code, reply["code"]) == (401, 4001)
    code, reply = await call("POST", "/v1/sessions/start", headers=bearer("not-a-token"))
    assert code == 401
    assert emulator.sessions[session_id].status == "minted"

    code, reply = await call("POST", "/v1/sessions/start", headers=bearer(token))
    assert (code, reply["code"]) == (201, 1000)
    data = reply["data"]
    assert data["session_id"] == session_id
    assert data["livekit_url"].startswith("wss://")
    assert data["livekit_client_token"] == emulator.sessions[session_id].livekit_client_token
    assert data["livekit_agent_token"] and data["ws_url"] is None
    assert data["max_session_duration"] > 0
    assert emulator.sessions[session_id].status == "started"
    assert emulator.active_sessions() == [emulator.sessions[session_id]]


@pytest.mark.gen_test
async def test_start_is_rejected_twice_and_after_stop(call, start):
    _, token = await start()
    code, reply = await call("POST", "/v1/sessions/start", headers=bearer(token))
    assert (code, reply) == (400, {"code": 4000, "message": "Session already started", "data": None})
    assert (await call("POST", "/v1/sessions/stop", headers=bearer(token)))[0] == 200
    code, reply = await call("POST", "/v1/sessions/start", headers=bearer(token))
    assert (code, reply["code"]) == (400, 4000)


@pytest.mark.gen_test
async def test_max_sessions_limits_started_sessions(emulator, call, mint, start):
    emulator.max_sessions = 1
    await start()
    _, token = await mint()
    code, reply = await call("POST", "/v1/sessions/start", headers=bearer(token))
    assert (code, reply["code"]) == (400, 4000)
    assert len(emulator.active_sessions()) == 1


@pytest.mark.gen_test
async def test_stop_by_bearer_needs_no_body_and_is_idempotent(emulator, call, start):
    session_id, token = await start()
    assert await call("POST", "/v1/sessions/stop", headers=bearer(token)) == (
        200, {"code": 1000, "data": None, "message": "Session stopped"})
    session = emulator.sessions[session_id]
    assert (session.status, session.stop_reason, session.end_reason) == ("stopped", None, "UNKNOWN")
    code, _ = await call("POST", "/v1/sessions/stop", {"reason": "USER_CLOSED"}, bearer(token))
    assert code == 200
    assert (session.status, session.end_reason) == ("stopped", "UNKNOWN")
    assert emulator.recorder.calls("/v1/sessions/stop")[0].body == b""


@pytest.mark.gen_test
async def test_stop_by_api_key_with_session_id_and_reason(emulator, call, mint):
    session_id, _ = await mint()  # stopping a session that never started (StrictMode double start)
    body = {"session_id": session_id, "reason": "USER_CLOSED"}
    code, reply = await call("POST", "/v1/sessions/stop", body, key_headers())
    assert (code, reply["code"]) == (200, 1000)
    session = emulator.sessions[session_id]
    assert (session.status, session.stop_reason, session.end_reason) == ("stopped", "USER_CLOSED", "USER_CLOSED")


@pytest.mark.gen_test
async def test_stop_rejections(call, start):
    session_id, token = await start()
    code, reply = await call("POST", "/v1/sessions/stop", {"session_id": session_id, "reason": "BORED"},
                             key_headers())
    assert (code, reply["detail"][0]["loc"]) == (422, ["body", "reason"])
    code, reply = await call("POST", "/v1/sessions/stop", {"session_id": str(uuid.uuid4())}, key_headers())
    assert (code, reply) == (404, {"code": 4004, "message": "Session not found", "data": None})
    code, reply = await call("POST", "/v1/sessions/stop", {}, key_headers())
    assert (code, reply["code"]) == (400, 4000)
    code, reply = await call("POST", "/v1/sessions/stop", {"session_id": session_id}, {})
    assert (code, reply["code"]) == (401, 4001)
    code, reply = await call("POST", "/v1/sessions/stop", {"session_id": str(uuid.uuid4())}, bearer(token))
    assert (code, reply["code"]) == (400, 4000)


@pytest.mark.gen_test
async def test_keep_alive_resets_the_idle_timer(emulator, call, start):
    session_id, token = await start()
    session = emulator.sessions[session_id]
    session.last_activity -= 100
    assert (await call("POST", "/v1/sessions/keep-alive", headers=bearer(token)))[0] == 200
    assert time.time() - session.last_activity < 5
    session.last_activity -= 100
    code, reply = await call("POST", "/v1/sessions/keep-alive", {"session_id": session_id}, key_headers())
    assert (code, reply["code"]) == (200, 1000)
    assert time.time() - session.last_activity < 5
    await call("POST", "/v1/sessions/stop", headers=bearer(token))
    code, reply = await call("POST", "/v1/sessions/keep-alive", headers=bearer(token))
    assert (code, reply["code"]) == (400, 4000)


@pytest.mark.gen_test
async def test_transcript_pages_never_repeat_or_skip_entries(emulator, call, start):
    session_id, _ = await start()
    stamps = [100.0, 101.0, 101.0, 101.0, 102.0, 103.0, 103.0, 104.0, 105.0, 105.0, 105.0, 105.0, 106.0]
    for number, stamp in enumerate(stamps):
        say = emulator.avatar_says if number % 2 else emulator.user_says
        say(session_id, f"line {number}", at=stamp)
    emulator.avatar_says(session_id, "late but early", at=99.5)  # out-of-order append
    expected = ["late but early"] + [f"line {n}" for n in range(len(stamps))]

    seen, pages, start_timestamp = [], [], None
    while True:
        query = "" if start_timestamp is None else f"?start_timestamp={start_timestamp}"
        code, reply = await call("GET", f"/v1/sessions/{session_id}/transcript{query}", headers=key_headers())
        assert (code, reply["code"]) == (200, 1000)
        data = reply["data"]
        assert data["session_active"] is True
        pages.append(len(data["transcript_data"]))
        seen += [entry["transcript"] for entry in data["transcript_data"]]
        start_timestamp = data["next_timestamp"]
        if start_timestamp is None:
            break
    assert seen == expected
    # Pages are cut before runs of equal timestamps; the run of four 105.0s exceeds a page and comes whole.
    assert pages == [2, 3, 3, 1, 4, 1]
    assert max(pages[:4]) <= emulator.transcript_page_size


@pytest.mark.gen_test
async def test_transcript_entries_and_time_window(emulator, call, start):
    session_id, token = await start()
    started = emulator.sessions[session_id].started_at
    first = emulator.user_says(session_id, "Hello", at=started + 2)
    emulator.avatar_says(session_id, "Hi there", at=started + 3)
    emulator.avatar_says(session_id, "Anything else?", at=started + 9)
    assert first == {"role": "user", "transcript": "Hello", "absolute_timestamp": started + 2,
                     "relative_timestamp": pytest.approx(2)}
    path = f"/v1/sessions/{session_id}/transcript?start_timestamp={started + 2}&end_timestamp={started + 3}"
    code, reply = await call("GET", path, headers=key_headers())
    assert code == 200
    assert [(e["role"], e["transcript"]) for e in reply["data"]["transcript_data"]] == [("avatar", "Hi there")]
    assert reply["data"]["next_timestamp"] is None

    await call("POST", "/v1/sessions/stop", headers=bearer(token))
    code, reply = await call("GET", f"/v1/sessions/{session_id}/transcript", headers=key_headers())
    assert reply["data"]["session_active"] is False and len(reply["data"]["transcript_data"]) == 3


@pytest.mark.gen_test
async def test_transcript_errors(emulator, call, start):
    session_id, token = await start()
    path = f"/v1/sessions/{session_id}/transcript"
    assert (await call("GET", path, headers=bearer(token)))[0] == 401
    assert (await call("GET", f"/v1/sessions/{uuid.uuid4()}/transcript", headers=key_headers()))[0] == 404
    code, reply = await call("GET", path + "?start_timestamp=soon", headers=key_headers())
    assert (code, reply["detail"][0]["loc"]) == (422, ["query", "start_timestamp"])
    emulator.transcript_fail_status = 503
    code, reply = await call("GET", path, headers=key_headers())
    assert (code, reply["code"], reply["data"]) == (503, 5030, None)
    emulator.transcript_fail_status = None
    assert (await call("GET", path, headers=key_headers()))[0] == 200


@pytest.mark.gen_test
async def test_idle_sessions_are_reaped(emulator, call, start):
    emulator.idle_timeout = 0.2
    idle_id, _ = await start()
    busy_id, busy_token = await start()
    for _ in range(8):
        await asyncio.sleep(0.05)
        assert (await call("POST", "/v1/sessions/keep-alive", headers=bearer(busy_token)))[0] == 200
    idle, busy = emulator.sessions[idle_id], emulator.sessions[busy_id]
    assert (idle.status, idle.end_reason, idle.stop_reason) == ("stopped", "IDLE_TIMEOUT", None)
    assert busy.status == "started"
    assert emulator.active_sessions() == [busy]
    emulator.stop()
    await asyncio.sleep(0.15)
    assert busy.status == "started"  # the reaper no longer runs


def test_sessions_past_max_duration_are_stopped():
    emulator = LiveAvatarEmulator()
    session = emulator.mint(token_body(is_sandbox=True))
    assert session.max_session_duration == 60
    session.status, session.started_at = "started", time.time()
    emulator.reap(now=session.started_at + 30)
    assert session.status == "started"
    session.last_activity = session.started_at + 59
    emulator.reap(now=session.started_at + 61)
    assert (session.status, session.end_reason) == ("stopped", "MAX_DURATION_REACHED")


@pytest.mark.gen_test
async def test_session_listing_and_lookup(emulator, call, mint, start):
    stopped_id, stopped_token = await start()
    await call("POST", "/v1/sessions/stop", {"reason": "USER_DISCONNECTED"}, bearer(stopped_token))
    active_ids = [(await start())[0] for _ in range(3)]
    await mint()  # minted only: in neither list

    code, reply = await call("GET", "/v1/sessions", headers=key_headers())
    assert (code, reply["detail"][0]["loc"]) == (422, ["query", "type"])
    assert (await call("GET", "/v1/sessions?type=active", headers=bearer(stopped_token)))[0] == 401

    code, reply = await call("GET", "/v1/sessions?type=active&page_size=2", headers=key_headers())
    assert (code, reply["code"]) == (200, 1000)
    data = reply["data"]
    assert data["count"] == 3 and data["previous"] is None and "page=2" in data["next"]
    assert [r["id"] for r in data["results"]] == active_ids[::-1][:2]
    code, reply = await call("GET", "/v1/sessions?type=active&page_size=2&page=2", headers=key_headers())
    assert [r["id"] for r in reply["data"]["results"]] == active_ids[:1] and reply["data"]["next"] is None

    code, reply = await call("GET", "/v1/sessions?type=historic", headers=key_headers())
    [entry] = reply["data"]["results"]
    assert (entry["id"], entry["end_reason"], entry["mode"], entry["source"]) == (
        stopped_id, "USER_DISCONNECTED", "FULL", "API")
    assert entry["end_at"].endswith("Z")

    code, reply = await call("GET", f"/v1/sessions/{stopped_id}", headers=key_headers())
    assert (code, reply["data"]) == (200, entry)
    assert (await call("GET", f"/v1/sessions/{uuid.uuid4()}", headers=key_headers()))[0] == 404
    assert (await call("GET", "/v1/sessions/not-a-uuid", headers=key_headers()))[0] == 422


@pytest.mark.gen_test
async def test_response_delay_and_unknown_paths(emulator, call):
    emulator.response_delay = 0.1
    began = time.monotonic()
    assert await call("GET", "/v1/avatars/nothing", headers=key_headers()) == (404, {"detail": "Not Found"})
    assert time.monotonic() - began >= 0.1
    assert emulator.recorder.calls("/v1/avatars/nothing", "GET")
