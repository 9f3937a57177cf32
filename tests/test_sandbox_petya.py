"""The Petya reference implementation over a real MongoDB wire-protocol server."""
import json

import pytest
from pymongo.errors import DuplicateKeyError

from sandbox.petya import DEFAULT_CONFIG, PetyaReference

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


async def post_status(http_client, base_url, conversation_id, body, token=SERVICE_TOKEN):
    headers = {"Content-Type": "application/json"}
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
    assert (code, reply) == (200, {"ok": True, "conversationId": "conv-3", "sessionId": "heygen_session_1"})
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
                             "transcript": TRANSCRIPT, "at": conversation["updatedAt"]}
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
async def test_fail_status_stores_nothing(petya, http_client, base_url):
    petya.fail_status = 503
    code, reply = await post_status(http_client, base_url, "conv-5", status_body())
    assert code == 503 and reply["message"]
    assert petya.get_conversation("conv-5") is None and petya.deliveries() == []
    assert petya.recorder.calls("/conv-5/status")[0].json() == status_body()
