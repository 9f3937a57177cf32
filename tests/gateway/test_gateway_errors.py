"""Bad input and upstream failures: clear JSON errors with the right status, HeyGen untouched when it must be."""
import pytest

from tests.helpers.client import GatewayClient
from tests.helpers.flows import assert_error, open_session


@pytest.mark.gen_test
async def test_invalid_json_and_fields_are_400_naming_the_field(client):
    _, session = await open_session(client)
    assert_error(await client.call("/v1/streaming.task", raw=b"{not json"), 400, "JSON")
    assert_error(await client.call("/v1/streaming.task", raw=b"[1, 2]"), 400, "object")
    assert_error(await client.call("/v1/streaming.task", {"session_id": session["session_id"]}), 400, "text")
    reply = await client.call("/v1/streaming.task", {"session_id": session["session_id"], "text": "hi",
                                                     "task_type": "sing"})
    assert_error(reply, 400, "task_type")
    assert "task_type" in reply.json["errors"]
    assert_error(await client.call("/v1/streaming.start", {}), 400, "session_id")
    assert_error(await client.call("/v1/streaming.new", {"quality": "ultra"}), 400, "quality")


@pytest.mark.gen_test
async def test_missing_or_unknown_key_is_401(sandbox, client):
    assert_error(await client.call("/v1/streaming.create_token", api_key=None), 401)
    assert_error(await client.call("/v1/streaming.new", {}, api_key="not-a-customer"), 401, "API key")
    assert_error(await client.call("/v1/streaming.new", {}, api_key=None,
                                   headers={"Authorization": "Bearer ilgt_forged"}), 401, "token")
    assert not sandbox.heygen.recorder.calls("/v1/streaming.new")


@pytest.mark.gen_test
async def test_bearer_api_key_and_header_case_are_accepted(sandbox, client):
    reply = await client.call("/v1/streaming.create_token", api_key=None,
                              headers={"Authorization": f"Bearer {client.api_key}"})
    assert reply.status == 200 and reply.data["token"]
    reply = await client.call("/v1/streaming.create_token", api_key=None, headers={"x-api-key": client.api_key})
    assert reply.status == 200


@pytest.mark.gen_test
async def test_unknown_and_foreign_sessions_are_404_and_heygen_is_not_called(sandbox, client):
    sandbox.petya.create_account("other-customer-key", name="Other")
    _, session = await open_session(client)
    other = GatewayClient(sandbox.gateway_url, api_key="other-customer-key")
    before = len(sandbox.heygen.recorder.requests)
    for path, body in [("/v1/streaming.start", {}), ("/v1/streaming.task", {"text": "hi", "task_type": "talk"}),
                       ("/v1/streaming.stop", {}), ("/v1/streaming.keep_alive", {}),
                       ("/v1/streaming.interrupt", {}), ("/v1/streaming.avatar_message", {"text": "x"}),
                       ("/v1/streaming.user_message", {"text": "x"})]:
        assert_error(await other.call(path, {"session_id": session["session_id"], **body}), 404, "session")
        assert_error(await client.call(path, {"session_id": "no-such-session", **body}), 404, "session")
    assert len(sandbox.heygen.recorder.requests) == before
    assert sandbox.heygen.sessions[session["session_id"]].status == "new"


@pytest.mark.gen_test
async def test_body_over_the_limit_is_413(make_sandbox):
    sandbox = await make_sandbox(MAX_BODY_SIZE="1024")
    client = GatewayClient(sandbox.gateway_url)
    big = {"session_id": "x", "text": "a" * 2000, "task_type": "repeat"}
    assert_error(await client.call("/v1/streaming.task", big), 413, "1024")


@pytest.mark.gen_test
async def test_unknown_route_is_json_404(client):
    assert_error(await client.call("/v1/nope", {}), 404)
    assert_error(await client.call("/v1/streaming.list", {}), 404)


@pytest.mark.gen_test
async def test_heygen_errors_pass_through_with_status_and_body(sandbox, client):
    sandbox.petya.update_account_config(client.api_key, avatarId="No_Such_Avatar")
    sandbox.gateway.petya.cache = type(sandbox.gateway.petya.cache)(0)  # see the new config now
    await client.call("/v1/streaming.create_token")
    reply = await client.call("/v1/streaming.new", {"quality": "low", "version": "v2"})
    assert reply.status == 400 and reply.json == {"code": 10013, "message": "avatar not found"}


@pytest.mark.gen_test
async def test_heygen_account_limit_is_answered_as_a_concurrency_limit(sandbox, client):
    for _ in range(sandbox.heygen.max_sessions):
        await open_session(client)
    reply = await client.call("/v1/streaming.new", {"version": "v2"})
    upstream = sandbox.heygen.recorder.calls("/v1/streaming.new")[-1]
    assert upstream  # HeyGen was asked, and refused: our account's slots are all taken
    assert reply.status == 429 and reply.json["code"] == "concurrency_limit_exceeded"
    assert reply.json["limit"] is None and reply.json["running"] is None  # HeyGen does not say


@pytest.mark.gen_test
async def test_task_in_wrong_state_passes_heygen_error(client):
    _, session = await open_session(client)
    reply = await client.call("/v1/streaming.task", {"session_id": session["session_id"], "text": "hi",
                                                     "task_type": "repeat"})
    assert reply.status == 400 and reply.json["code"] == 400006


@pytest.mark.gen_test
async def test_heygen_unreachable_is_502(sandbox, client):
    await sandbox.served["heygen"].stop()
    assert_error(await client.call("/v1/streaming.create_token"), 502, "HeyGen")


@pytest.mark.gen_test(timeout=20)
async def test_heygen_too_slow_is_504(make_sandbox):
    sandbox = await make_sandbox(UPSTREAM_REQUEST_TIMEOUT="0.3")
    sandbox.heygen.response_delay = 1.0
    assert_error(await GatewayClient(sandbox.gateway_url).call("/v1/streaming.create_token"), 504, "HeyGen")


@pytest.mark.gen_test
async def test_petya_down_at_config_time_is_503_and_bad_answer_502(sandbox, client):
    sandbox.petya.config_fail_status = 500
    assert_error(await client.call("/v1/streaming.create_token"), 502, "Petya")
    await sandbox.served["petya"].stop()
    assert_error(await client.call("/v1/streaming.create_token"), 503, "Petya")
    assert not sandbox.heygen.recorder.calls("/v1/streaming.create_token")


@pytest.mark.gen_test
async def test_config_is_cached_per_key(sandbox, client):
    for _ in range(3):
        assert (await client.call("/v1/streaming.create_token")).status == 200
    assert len(sandbox.petya.recorder.calls("/api/v1/avatar/config")) == 1


@pytest.mark.gen_test
async def test_browser_cannot_override_avatar_knowledge_base_or_voice(sandbox, client):
    sandbox.petya.update_account_config(client.api_key, knowledgeBaseId="kb-1", voiceId="voice-1")
    await client.call("/v1/streaming.create_token")
    reply = await client.call("/v1/streaming.new", {
        "version": "v2", "quality": "high", "avatar_id": "Wayne_20240711", "avatar_name": "Wayne_20240711",
        "knowledge_base_id": "evil-kb", "voice": {"voice_id": "evil", "rate": 1.2}})
    assert reply.status == 200
    sent = sandbox.heygen.recorder.calls("/v1/streaming.new")[-1].json()
    assert sent["avatar_id"] == "Katya_Chair_Sitting_public" and "avatar_name" not in sent
    assert sent["knowledge_base_id"] == "kb-1"
    assert sent["voice"] == {"voice_id": "voice-1", "rate": 1.2}
    assert sent["quality"] == "high" and sent["version"] == "v2"


@pytest.mark.gen_test
async def test_session_token_is_one_use_and_sdk_bearer_flow_works(sandbox, client):
    token = (await client.call("/v1/streaming.create_token")).data["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    first = await client.call("/v1/streaming.new", {"version": "v2"}, api_key=None, headers=bearer)
    assert first.status == 200 and first.data["intro"]
    session_id = first.data["session_id"]
    # The SDK calls every later endpoint with the same Bearer token.
    assert (await client.call("/v1/streaming.start", {"session_id": session_id}, api_key=None,
                              headers=bearer)).status == 200
    again = await client.call("/v1/streaming.new", {"version": "v2"}, api_key=None, headers=bearer)
    assert_error(again, 401, "token")
    # HeyGen's own token bound the session: the emulator saw a Bearer token, never our key, on streaming.new.
    upstream = sandbox.heygen.recorder.calls("/v1/streaming.new")[0]
    assert upstream.headers["authorization"].startswith("Bearer ") and "x-api-key" not in upstream.headers
    assert sandbox.heygen.sessions[session_id].token == upstream.headers["authorization"][7:]
