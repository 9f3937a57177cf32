"""The Petya reference implementation over a real MongoDB wire-protocol server."""
import json

import pytest
from pymongo.errors import DuplicateKeyError

from sandbox.petya import DEFAULT_CONFIG, ConfigValidationError, PetyaReference

SERVICE_TOKEN = "test-service-token"
STATUS_PATH = "/api/v1/avatar/conversations/{}/status"
TRANSCRIPT = [
    {"role": "user", "transcript": "Hello, how are you?", "timestamp": 1234567890},
    {"role": "avatar", "transcript": "I'm doing well, thanks!", "absolute_timestamp": 1234567891.5},
]


@pytest.fixture
def petya(mongodb_server_uri, db_name):
    reference = PetyaReference(mongodb_server_uri, db_name, service_token=SERVICE_TOKEN)
    yield reference
    reference.close()


@pytest.fixture
def app(petya):
    return petya.make_app()


async def get_config(http_client, base_url, headers):
    response = await http_client.fetch(base_url + "/api/v1/avatar/config", headers=headers, raise_error=False)
    return response.code, json.loads(response.body)


async def post_status(http_client, base_url, conversation_id, body, token=SERVICE_TOKEN, headers=None):
    headers = {"Content-Type": "application/json", **(headers or {})}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    payload = body if isinstance(body, str) else json.dumps(body)
    response = await http_client.fetch(base_url + STATUS_PATH.format(conversation_id), method="POST",
                                       headers=headers, body=payload, raise_error=False)
    return response.code, json.loads(response.body)


def status_body(**changes):
    return {"sessionId": "heygen_session_1", "status": "completed", "transcript": TRANSCRIPT} | changes


@pytest.mark.gen_test
async def test_config_defaults_for_known_key(petya, http_client, base_url):
    petya.create_account("key-1")
    code, body = await get_config(http_client, base_url, {"x-api-key": "key-1"})
    assert (code, body) == (200, DEFAULT_CONFIG)
    assert petya.recorder.calls("/avatar/config", "GET")[0].headers["x-api-key"] == "key-1"


@pytest.mark.gen_test
async def test_config_overrides_and_extra_fields(petya, http_client, base_url):
    petya.create_account("key-2", avatarId="Anna_public", voiceId="voice-9")
    petya.update_account_config("key-2", intro="Hi!", greetingDelay=2)
    code, body = await get_config(http_client, base_url, {"X-Api-Key": "key-2"})
    assert code == 200
    assert body == DEFAULT_CONFIG | {"avatarId": "Anna_public", "voiceId": "voice-9", "intro": "Hi!",
                                     "greetingDelay": 2}


def test_account_stores_only_key_hash(petya):
    account = petya.create_account("secret-key", name="Acme")
    stored = petya.accounts.find_one({}, {"_id": 0})
    assert stored == account
    assert "secret-key" not in json.dumps(stored)
    with pytest.raises(DuplicateKeyError):
        petya.create_account("secret-key")
    with pytest.raises(KeyError):
        petya.update_account_config("other-key", intro="x")


@pytest.mark.gen_test
async def test_config_bearer_form(petya, http_client, base_url):
    petya.create_account("key-3", language="de")
    code, body = await get_config(http_client, base_url, {"Authorization": "Bearer key-3"})
    assert (code, body["language"]) == (200, "de")


@pytest.mark.gen_test
@pytest.mark.parametrize("headers", [{}, {"X-Api-Key": "wrong"}, {"Authorization": "Bearer wrong"}])
async def test_config_rejects_unknown_or_missing_key(petya, http_client, base_url, headers):
    petya.create_account("key-4")
    assert await get_config(http_client, base_url, headers) == (401, {"message": "Invalid API key"})


@pytest.mark.gen_test
async def test_config_fail_status(petya, http_client, base_url):
    petya.create_account("key-5")
    petya.config_fail_status = 503
    code, body = await get_config(http_client, base_url, {"X-Api-Key": "key-5"})
    assert code == 503 and body["message"]
    assert len(petya.recorder.calls("/avatar/config")) == 1


@pytest.mark.gen_test
@pytest.mark.parametrize("token", [None, "wrong-token", "key-6"])
async def test_status_requires_service_token(petya, http_client, base_url, token):
    petya.create_account("key-6")
    code, _ = await post_status(http_client, base_url, "conv-1", status_body(), token=token)
    assert code == 401
    assert petya.get_conversation("conv-1") is None and petya.deliveries() == []


@pytest.mark.gen_test
@pytest.mark.parametrize("body, field", [
    ("not json", "body"),
    ("[1, 2]", "body"),
    (status_body(sessionId=""), "sessionId"),
    (status_body(status="ended"), "status"),
    (status_body(transcript="hello"), "transcript"),
    (status_body(transcript=["hi"]), "transcript[0]"),
    (status_body(transcript=[{"role": "bot", "transcript": "hi"}]), "transcript[0].role"),
    (status_body(transcript=[{"role": "user"}]), "transcript[0].transcript"),
    (status_body(transcript=[TRANSCRIPT[0], {"role": "user", "transcript": "x", "timestamp": "soon"}]),
     "transcript[1].timestamp"),
    (status_body(transcript=[{"role": "user", "transcript": "x", "absolute_timestamp": True}]),
     "transcript[0].absolute_timestamp"),
])
async def test_status_validation_names_field(petya, http_client, base_url, body, field):
    code, reply = await post_status(http_client, base_url, "conv-2", body)
    assert code == 400
    assert reply["message"].startswith(field + " ")
    assert petya.get_conversation("conv-2") is None and petya.deliveries() == []


@pytest.mark.gen_test
async def test_status_upserts_conversation_and_logs_delivery(petya, http_client, base_url):
    code, reply = await post_status(http_client, base_url, "conv-3", status_body(status="active", transcript=[]))
    assert (code, reply) == (200, {"ok": True, "conversationId": "conv-3", "sessionId": "heygen_session_1",
                                   "repeat": False})
    first = petya.get_conversation("conv-3")
    assert (first["status"], first["transcript"]) == ("active", [])

    code, _ = await post_status(http_client, base_url, "conv-3", status_body())
    assert code == 200
    conversation = petya.get_conversation("conv-3")
    assert conversation["status"] == "completed" and conversation["transcript"] == TRANSCRIPT
    assert conversation["createdAt"] == first["createdAt"] <= conversation["updatedAt"]
    assert set(conversation) == {"conversationId", "sessionId", "status", "transcript", "createdAt", "updatedAt"}

    deliveries = petya.deliveries("conv-3")
    assert [d["status"] for d in deliveries] == ["active", "completed"]
    assert deliveries[1] == {"conversationId": "conv-3", "sessionId": "heygen_session_1", "status": "completed",
                             "transcript": TRANSCRIPT, "at": conversation["updatedAt"], "deliveryId": None}
    assert petya.deliveries("other") == []


@pytest.mark.gen_test
async def test_identical_repeat_is_idempotent(petya, http_client, base_url):
    assert (await post_status(http_client, base_url, "conv-4", status_body()))[0] == 200
    stored = petya.get_conversation("conv-4")
    code, reply = await post_status(http_client, base_url, "conv-4", status_body())
    assert (code, reply["ok"]) == (200, True)
    assert petya.get_conversation("conv-4") == stored
    assert len(petya.deliveries()) == 1
    assert len(petya.recorder.calls("/conv-4/status", "POST")) == 2


@pytest.mark.gen_test
async def test_a_delivery_id_is_applied_once_whatever_the_repeat_carries(petya, http_client, base_url):
    key = {"Idempotency-Key": "dlv_1"}
    code, reply = await post_status(http_client, base_url, "conv-6", status_body(deliveryId="dlv_1"), headers=key)
    assert (code, reply["repeat"]) == (200, False)
    stored = petya.get_conversation("conv-6")
    code, reply = await post_status(http_client, base_url, "conv-6", status_body(deliveryId="dlv_1", transcript=[]),
                                    headers=key)
    assert (code, reply["repeat"]) == (200, True)
    assert petya.get_conversation("conv-6") == stored and len(petya.deliveries("conv-6")) == 1
    # A new delivery id is a new delivery; a body that contradicts its header is refused.
    code, _ = await post_status(http_client, base_url, "conv-6", status_body(deliveryId="dlv_2", status="failed"),
                                headers={"Idempotency-Key": "dlv_2"})
    assert code == 200 and petya.get_conversation("conv-6")["status"] == "failed"
    code, reply = await post_status(http_client, base_url, "conv-6", status_body(deliveryId="dlv_3"), headers=key)
    assert code == 400 and "Idempotency-Key" in reply["message"]


@pytest.mark.gen_test
async def test_fail_status_stores_nothing(petya, http_client, base_url):
    petya.fail_status = 503
    code, reply = await post_status(http_client, base_url, "conv-5", status_body())
    assert code == 503 and reply["message"]
    assert petya.get_conversation("conv-5") is None and petya.deliveries() == []
    assert petya.recorder.calls("/conv-5/status")[0].json() == status_body()


# --- demo console routes: admin config, conversation read-back, CORS -----------------------------------------------

ADMIN_CONFIG_PATH = "/api/v1/admin/accounts/config"
CONVERSATION_PATH = "/api/v1/avatar/conversations/{}"


async def call(http_client, base_url, path, method="GET", headers=None, body=None):
    payload = None if body is None else (body if isinstance(body, str) else json.dumps(body))
    response = await http_client.fetch(base_url + path, method=method, headers=headers or {}, body=payload,
                                       raise_error=False, allow_nonstandard_methods=True)
    return response.code, (json.loads(response.body) if response.body else None), response.headers


def admin_headers(api_key, token=SERVICE_TOKEN, **extra):
    headers = {"X-Api-Key": api_key, "Content-Type": "application/json", **extra}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


@pytest.mark.gen_test
async def test_admin_config_get_and_put(petya, http_client, base_url):
    petya.create_account("key-a", voiceId="voice-1")
    petya.create_account("key-b")
    code, body, _ = await call(http_client, base_url, ADMIN_CONFIG_PATH, headers=admin_headers("key-a"))
    assert (code, body) == (200, DEFAULT_CONFIG | {"voiceId": "voice-1"})

    changes = {"avatarId": "Anna_public_3_20240108", "intro": "Hi from the admin!", "knowledgeBaseId": "kb-7",
               "voiceId": None}
    code, body, _ = await call(http_client, base_url, ADMIN_CONFIG_PATH, "PUT", admin_headers("key-a"), changes)
    assert (code, body) == (200, DEFAULT_CONFIG | changes)
    # What the gateway reads changed too; the other account did not.
    assert petya.config_for_key("key-a") == DEFAULT_CONFIG | changes
    assert petya.config_for_key("key-b") == DEFAULT_CONFIG
    # Only the fields given change; an empty object changes nothing.
    code, body, _ = await call(http_client, base_url, ADMIN_CONFIG_PATH, "PUT", admin_headers("key-a"),
                               {"language": "de"})
    assert (code, body) == (200, DEFAULT_CONFIG | changes | {"language": "de"})
    code, body, _ = await call(http_client, base_url, ADMIN_CONFIG_PATH, "PUT", admin_headers("key-a"), {})
    assert (code, body["language"]) == (200, "de")


@pytest.mark.gen_test
@pytest.mark.parametrize("method", ["GET", "PUT"])
@pytest.mark.parametrize("token", [None, "wrong-token", "key-c"])
async def test_admin_config_requires_service_token(petya, http_client, base_url, method, token):
    petya.create_account("key-c")
    code, body, _ = await call(http_client, base_url, ADMIN_CONFIG_PATH, method, admin_headers("key-c", token),
                               {"intro": "hacked"} if method == "PUT" else None)
    assert (code, body) == (401, {"message": "Invalid service token"})
    assert petya.config_for_key("key-c") == DEFAULT_CONFIG


@pytest.mark.gen_test
@pytest.mark.parametrize("method", ["GET", "PUT"])
async def test_admin_config_unknown_or_missing_key(petya, http_client, base_url, method):
    body = {"intro": "x"} if method == "PUT" else None
    code, reply, _ = await call(http_client, base_url, ADMIN_CONFIG_PATH, method, admin_headers("nobody"), body)
    assert (code, reply) == (404, {"message": "Unknown API key"})
    headers = {"Authorization": f"Bearer {SERVICE_TOKEN}", "Content-Type": "application/json"}
    code, reply, _ = await call(http_client, base_url, ADMIN_CONFIG_PATH, method, headers, body)
    assert code == 400 and "X-Api-Key" in reply["message"]
    assert petya.accounts.count_documents({}) == 0


@pytest.mark.gen_test
@pytest.mark.parametrize("body, field", [
    ("not json", "body"),
    ("[1]", "body"),
    ({"avatarId": ""}, "avatarId"),
    ({"avatarId": None}, "avatarId"),
    ({"language": 3}, "language"),
    ({"intro": 5}, "intro"),
    ({"voiceId": ["v"]}, "voiceId"),
    ({"intro": "ok", "apiKey": "x"}, "apiKey"),
    ({"provider": "openai"}, "provider"),
    ({"provider": "HeyGen"}, "provider"),
    ({"provider": ""}, "provider"),
    ({"provider": 1}, "provider"),
    ({"provider": ["heygen"]}, "provider"),
    ({"intro": "changed", "provider": "liveavatar "}, "provider"),
])
async def test_admin_config_put_validation_names_field(petya, http_client, base_url, body, field):
    petya.create_account("key-d")
    code, reply, _ = await call(http_client, base_url, ADMIN_CONFIG_PATH, "PUT", admin_headers("key-d"), body)
    assert code == 400
    assert reply["message"].startswith(field + " ")
    assert petya.config_for_key("key-d") == DEFAULT_CONFIG


@pytest.mark.gen_test
async def test_provider_set_by_the_admin_is_what_the_gateway_reads(petya, http_client, base_url):
    """`provider` is absent until set; the admin's PUT stores it, and the gateway's config route answers it."""
    petya.create_account("key-p")
    petya.create_account("key-q")
    code, body = await get_config(http_client, base_url, {"X-Api-Key": "key-p"})
    assert code == 200 and "provider" not in body
    for value in ("liveavatar", "heygen", None, "liveavatar"):
        code, reply, _ = await call(http_client, base_url, ADMIN_CONFIG_PATH, "PUT", admin_headers("key-p"),
                                    {"provider": value})
        assert (code, reply) == (200, DEFAULT_CONFIG | {"provider": value})
        code, body = await get_config(http_client, base_url, {"X-Api-Key": "key-p"})
        assert (code, body) == (200, DEFAULT_CONFIG | {"provider": value})
        code, body, _ = await call(http_client, base_url, ADMIN_CONFIG_PATH, headers=admin_headers("key-p"))
        assert (code, body["provider"]) == (200, value)
    # A later change of other fields keeps it; the other account never had one.
    code, reply, _ = await call(http_client, base_url, ADMIN_CONFIG_PATH, "PUT", admin_headers("key-p"),
                                {"intro": "Hi"})
    assert (code, reply["provider"], reply["intro"]) == (200, "liveavatar", "Hi")
    code, body = await get_config(http_client, base_url, {"Authorization": "Bearer key-q"})
    assert (code, body) == (200, DEFAULT_CONFIG)


@pytest.mark.gen_test
async def test_provider_from_create_and_update_is_validated(petya, http_client, base_url):
    petya.create_account("key-r", provider="liveavatar")
    code, body = await get_config(http_client, base_url, {"X-Api-Key": "key-r"})
    assert (code, body["provider"]) == (200, "liveavatar")
    for bad in ("LiveAvatar", "", "openai", 0, True):
        with pytest.raises(ConfigValidationError, match=r"^provider "):
            petya.update_account_config("key-r", provider=bad, intro="changed")
        with pytest.raises(ConfigValidationError, match=r"^provider "):
            petya.create_account("key-s", provider=bad)
    assert petya.config_for_key("key-r") == DEFAULT_CONFIG | {"provider": "liveavatar"}  # nothing changed
    assert petya.config_for_key("key-s") is None  # nothing stored
    petya.update_account_config("key-r", provider=None)
    code, body = await get_config(http_client, base_url, {"X-Api-Key": "key-r"})
    assert (code, body) == (200, DEFAULT_CONFIG | {"provider": None})


@pytest.mark.gen_test
async def test_conversation_read_back(petya, http_client, base_url):
    headers = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
    code, body, _ = await call(http_client, base_url, CONVERSATION_PATH.format("conv-r"), headers=headers)
    assert (code, body) == (404, {"message": "Conversation not found"})
    assert (await post_status(http_client, base_url, "conv-r", status_body()))[0] == 200
    code, body, _ = await call(http_client, base_url, CONVERSATION_PATH.format("conv-r"), headers=headers)
    assert (code, body) == (200, petya.get_conversation("conv-r"))
    assert body["transcript"] == TRANSCRIPT and body["status"] == "completed"
    for wrong in ({}, {"Authorization": "Bearer wrong"}, {"X-Api-Key": SERVICE_TOKEN}):
        code, body, _ = await call(http_client, base_url, CONVERSATION_PATH.format("conv-r"), headers=wrong)
        assert (code, body) == (401, {"message": "Invalid service token"})


@pytest.mark.gen_test
@pytest.mark.parametrize("path", [ADMIN_CONFIG_PATH, CONVERSATION_PATH.format("conv-x")])
async def test_demo_routes_answer_cors(petya, http_client, base_url, path):
    origin = "http://127.0.0.1:8123"
    code, body, headers = await call(http_client, base_url, path, "OPTIONS", {
        "Origin": origin, "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "authorization, content-type, x-api-key"})
    assert (code, body) == (204, None)
    assert headers["Access-Control-Allow-Origin"] == origin
    assert {m.strip() for m in headers["Access-Control-Allow-Methods"].split(",")} == {"GET", "PUT", "POST", "OPTIONS"}
    assert {h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")} == {
        "content-type", "authorization", "x-api-key"}
    assert "Origin" in headers["Vary"]
    # Real answers carry it too, errors included; without an Origin there is no CORS header.
    code, _, headers = await call(http_client, base_url, path, headers={"Origin": origin})
    assert code == 401 and headers["Access-Control-Allow-Origin"] == origin
    code, _, headers = await call(http_client, base_url, path)
    assert code == 401 and "Access-Control-Allow-Origin" not in headers


@pytest.mark.gen_test
async def test_gateway_routes_keep_their_behaviour_without_cors(petya, http_client, base_url):
    petya.create_account("key-e")
    response = await http_client.fetch(base_url + "/api/v1/avatar/config", headers={
        "X-Api-Key": "key-e", "Origin": "http://127.0.0.1:8123"}, raise_error=False)
    assert response.code == 200 and "Access-Control-Allow-Origin" not in response.headers
