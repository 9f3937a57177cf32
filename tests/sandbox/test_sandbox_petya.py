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
    (status_body(startedAt="1700000000"), "startedAt"),
    (status_body(endedAt=True), "endedAt"),
    (status_body(durationSeconds=[3]), "durationSeconds"),
    (status_body(provider=1), "provider"),
    (status_body(contract=["heygen"]), "contract"),
    (status_body(endReason=False), "endReason"),
    (status_body(accountId=7), "accountId"),
    (status_body(transcriptNote={"why": "x"}), "transcriptNote"),
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
    assert set(conversation) == {"conversationId", "sessionId", "status", "transcript", "sessions", "createdAt",
                                 "updatedAt"}
    assert conversation["sessions"] == [{  # the same session again (no delivery id: an older gateway) replaces it
        "sessionId": "heygen_session_1", "status": "completed", "transcript": TRANSCRIPT, "deliveryId": None,
        "transcriptDeliveryId": None, "receivedAt": conversation["updatedAt"]}]

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


# --- a conversation spans sessions ------------------------------------------------------------------------------------

def turn(role, text, at):
    return {"role": role, "transcript": text, "absolute_timestamp": at, "timestamp": at}


FIRST = [turn("user", "Hi, I'm back.", 1700000010.0), turn("avatar", "Welcome back!", 1700000011.5)]
SECOND = [turn("user", "Still there?", 1700000100.0), turn("avatar", "Yes, still here.", 1700000101.0)]
DETAILS = {"provider": "liveavatar", "contract": "heygen", "startedAt": 1700000009, "endedAt": 1700000012.5,
           "durationSeconds": 3.5, "endReason": "idle_timeout", "accountId": "acct-1",
           "transcriptNote": "room joined late"}


def handoff(session_id, transcript, delivery_id, **changes):
    """A hand-off as the gateway sends it: its body and the matching Idempotency-Key header."""
    return (status_body(sessionId=session_id, transcript=transcript, deliveryId=delivery_id, **changes),
            {"Idempotency-Key": delivery_id})


async def hand_off(http_client, base_url, conversation_id, session_id, transcript, delivery_id, **changes):
    body, headers = handoff(session_id, transcript, delivery_id, **changes)
    code, reply = await post_status(http_client, base_url, conversation_id, body, headers=headers)
    assert code == 200, reply
    return reply


def words(transcript):
    return [t["transcript"] for t in transcript]


@pytest.mark.gen_test
async def test_a_conversation_keeps_every_sessions_words_in_spoken_order_whatever_order_they_arrive(
        petya, http_client, base_url):
    # The second session's hand-off lands first (the first one's was retried late).
    assert (await hand_off(http_client, base_url, "conv-s", "s-2", SECOND, "dlv-s-2"))["repeat"] is False
    assert words(petya.get_conversation("conv-s")["transcript"]) == words(SECOND)
    assert (await hand_off(http_client, base_url, "conv-s", "s-1", FIRST, "dlv-s-1"))["repeat"] is False

    conversation = petya.get_conversation("conv-s")
    assert conversation["transcript"] == FIRST + SECOND
    assert [(s["sessionId"], s["status"], s["transcript"], s["deliveryId"]) for s in conversation["sessions"]] == [
        ("s-1", "completed", FIRST, "dlv-s-1"), ("s-2", "completed", SECOND, "dlv-s-2")]
    # The conversation's status and session are its latest-started session's, whatever arrived last.
    assert (conversation["sessionId"], conversation["status"]) == ("s-2", "completed")
    assert [d["sessionId"] for d in petya.deliveries("conv-s")] == ["s-2", "s-1"]

    # A repeat of either delivery, whatever it carries, changes nothing.
    for session_id, delivery_id in (("s-1", "dlv-s-1"), ("s-2", "dlv-s-2")):
        reply = await hand_off(http_client, base_url, "conv-s", session_id, [], delivery_id, status="failed")
        assert reply["repeat"] is True
    assert petya.get_conversation("conv-s") == conversation and len(petya.deliveries("conv-s")) == 2


@pytest.mark.gen_test
async def test_interleaved_and_untimed_turns_merge_by_time_then_session_then_position(petya, http_client, base_url):
    one = [turn("user", "a", 10), turn("avatar", "c", 30), {"role": "user", "transcript": "d (no time)"}]
    two = [turn("user", "b", 20), turn("avatar", "e", 30), turn("user", "f", 40)]
    await hand_off(http_client, base_url, "conv-m", "s-b", two, "dlv-m-b", status="active")
    await hand_off(http_client, base_url, "conv-m", "s-a", one, "dlv-m-a")
    conversation = petya.get_conversation("conv-m")
    # Equal times: the earlier-started session's turn first; an untimed turn stays after the turn before it.
    assert words(conversation["transcript"]) == ["a", "b", "c", "d (no time)", "e", "f"]
    assert [s["sessionId"] for s in conversation["sessions"]] == ["s-a", "s-b"]
    assert (conversation["sessionId"], conversation["status"]) == ("s-b", "active")


@pytest.mark.gen_test
async def test_a_hand_off_with_fewer_words_never_takes_words_the_conversation_has(petya, http_client, base_url):
    await hand_off(http_client, base_url, "conv-e", "s-1", FIRST, "dlv-e-1")
    await hand_off(http_client, base_url, "conv-e", "s-2", SECOND, "dlv-e-2")
    # The first session re-delivered empty (its words erased by the gateway's retention), then with one turn.
    reply = await hand_off(http_client, base_url, "conv-e", "s-1", [], "dlv-e-1-again", endReason="retention")
    assert reply["repeat"] is False
    await hand_off(http_client, base_url, "conv-e", "s-1", FIRST[:1], "dlv-e-1-third")
    conversation = petya.get_conversation("conv-e")
    assert conversation["transcript"] == FIRST + SECOND
    first = conversation["sessions"][0]
    assert (first["sessionId"], first["transcript"], first["deliveryId"], first["transcriptDeliveryId"]) == (
        "s-1", FIRST, "dlv-e-1-third", "dlv-e-1")
    assert "endReason" not in first  # the entry is the newest hand-off's, but for the words
    # The delivery log keeps what each hand-off carried.
    assert [words(d["transcript"]) for d in petya.deliveries("conv-e")] == [
        words(FIRST), words(SECOND), [], words(FIRST[:1])]
    # A newer hand-off of a session with at least as many turns replaces its words, and only its own.
    revised = [turn("user", "Hi, I am back.", 1700000010.0), *FIRST[1:]]
    await hand_off(http_client, base_url, "conv-e", "s-1", revised, "dlv-e-1-revised")
    assert petya.get_conversation("conv-e")["transcript"] == revised + SECOND


@pytest.mark.gen_test
async def test_a_hand_offs_session_details_are_stored_with_its_session(petya, http_client, base_url):
    await hand_off(http_client, base_url, "conv-d", "s-old", SECOND, "dlv-d-old")  # an older gateway: no details
    await hand_off(http_client, base_url, "conv-d", "s-new", FIRST, "dlv-d-new", **DETAILS, somethingElse=1)
    code, body, _ = await call(http_client, base_url, CONVERSATION_PATH.format("conv-d"),
                               headers={"Authorization": f"Bearer {SERVICE_TOKEN}"})
    assert code == 200 and body == petya.get_conversation("conv-d")
    new, old = body["sessions"]  # s-new started first (its startedAt), so it comes first, and its turns too
    assert new == {"sessionId": "s-new", "status": "completed", "transcript": FIRST, "deliveryId": "dlv-d-new",
                   "transcriptDeliveryId": "dlv-d-new", "receivedAt": new["receivedAt"], **DETAILS}
    assert set(old) == {"sessionId", "status", "transcript", "deliveryId", "transcriptDeliveryId", "receivedAt"}
    assert body["transcript"] == FIRST + SECOND and body["sessionId"] == "s-old"
    assert petya.deliveries("conv-d")[1] == {
        "conversationId": "conv-d", "sessionId": "s-new", "status": "completed", "transcript": FIRST,
        "at": new["receivedAt"], "deliveryId": "dlv-d-new", **DETAILS}
    # Null is the same as absent (an older or newer gateway may send a field it has no value for).
    await hand_off(http_client, base_url, "conv-d", "s-null", [], "dlv-d-null", startedAt=None, provider=None)
    entry = next(s for s in petya.get_conversation("conv-d")["sessions"] if s["sessionId"] == "s-null")
    assert "startedAt" not in entry and "provider" not in entry


@pytest.mark.gen_test
async def test_a_conversation_stored_before_sessions_were_kept_keeps_its_words(petya, http_client, base_url):
    petya.conversations.insert_one({"conversationId": "conv-old", "sessionId": "s-1", "status": "completed",
                                    "transcript": FIRST, "createdAt": 1.0, "updatedAt": 2.0})
    await hand_off(http_client, base_url, "conv-old", "s-2", SECOND, "dlv-old-2")
    conversation = petya.get_conversation("conv-old")
    assert conversation["transcript"] == FIRST + SECOND and conversation["createdAt"] == 1.0
    assert [s["sessionId"] for s in conversation["sessions"]] == ["s-1", "s-2"]


@pytest.mark.gen_test
async def test_fail_status_stores_nothing(petya, http_client, base_url):
    petya.fail_status = 503
    code, reply = await post_status(http_client, base_url, "conv-5", status_body())
    assert code == 503 and reply["message"]
    assert petya.get_conversation("conv-5") is None and petya.deliveries() == []
    assert petya.recorder.calls("/conv-5/status")[0].json() == status_body()
    # fail_sessions fails one session's hand-offs only.
    petya.fail_status = None
    petya.fail_sessions["s-x"] = 502
    code, _ = await post_status(http_client, base_url, "conv-5", status_body(sessionId="s-x"))
    assert code == 502 and petya.get_conversation("conv-5") is None
    code, _ = await post_status(http_client, base_url, "conv-5", status_body(sessionId="s-y"))
    assert code == 200 and [d["sessionId"] for d in petya.deliveries("conv-5")] == ["s-y"]


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
