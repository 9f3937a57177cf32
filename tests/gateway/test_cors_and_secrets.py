"""CORS as the plugin contract asks, and no secret in any response or log line."""
import logging

import pytest
from tornado.websocket import websocket_connect

from tests.helpers.client import GatewayClient, eventually
from tests.helpers.flows import avatar_done, open_session, ws_url

ALLOWED = "https://shop.example.com"


@pytest.mark.parametrize("path", ["/v1/streaming.new", "/api/v1/avatar/v1/streaming.task",
                                  "/v1/streaming.avatar_message"])
@pytest.mark.gen_test
async def test_preflight_from_an_allowed_origin(client, path):
    reply = await client.call(path, method="OPTIONS", api_key=None, headers={
        "Origin": ALLOWED, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-api-key"})
    assert reply.status == 204
    headers = reply.headers
    assert headers["Access-Control-Allow-Origin"] == ALLOWED
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in headers["Vary"]
    assert set(headers["Access-Control-Allow-Methods"].split(", ")) == {"GET", "POST", "OPTIONS"}
    assert {"Content-Type", "X-Api-Key", "X-api-key", "Authorization"} <= set(
        headers["Access-Control-Allow-Headers"].split(", "))


@pytest.mark.gen_test
async def test_foreign_origin_gets_no_cors_headers(client):
    reply = await client.call("/v1/streaming.new", method="OPTIONS", api_key=None,
                              headers={"Origin": "https://evil.example.net"})
    assert not any(h.startswith("Access-Control-") for h in reply.headers)
    reply = await client.call("/v1/streaming.create_token", headers={"Origin": "https://evil.example.net"})
    assert reply.status == 200 and "Access-Control-Allow-Origin" not in reply.headers


@pytest.mark.gen_test
async def test_errors_carry_cors_headers_too(client):
    reply = await client.call("/v1/streaming.new", {}, api_key=None, headers={"Origin": ALLOWED})
    assert reply.status == 401 and reply.headers["Access-Control-Allow-Origin"] == ALLOWED


@pytest.mark.gen_test
async def test_star_echoes_any_origin_with_credentials_never_a_literal_star(make_sandbox):
    sandbox = await make_sandbox(CORS_ORIGINS="*")
    reply = await GatewayClient(sandbox.gateway_url).call("/v1/streaming.create_token",
                                                          headers={"Origin": "https://any.example"})
    assert reply.headers["Access-Control-Allow-Origin"] == "https://any.example"
    assert reply.headers["Access-Control-Allow-Credentials"] == "true"


@pytest.mark.gen_test(timeout=30)
async def test_no_secret_in_any_response_or_log(sandbox, client, caplog):
    caplog.set_level(logging.DEBUG)
    sandbox.petya.create_account("other-customer-key")
    replies = []
    token, session = await open_session(client)
    session_id = session["session_id"]
    ws = await websocket_connect(ws_url(sandbox, session_id, token))
    for path, body in [("/v1/streaming.start", {}), ("/v1/streaming.task", {"text": "Hi", "task_type": "repeat"}),
                       ("/v1/streaming.keep_alive", {}), ("/v1/streaming.task", {"text": "x", "task_type": "bad"})]:
        replies.append(await client.call(path, {"session_id": session_id, **body}))
    await avatar_done(sandbox, session_id)
    other = GatewayClient(sandbox.gateway_url, "other-customer-key")
    replies.append(await other.call("/v1/streaming.stop", {"session_id": session_id}))
    replies.append(await client.call("/v1/streaming.new", {}, api_key="wrong-key"))
    replies.append(await client.call("/v1/streaming.stop", {"session_id": session_id}))
    await eventually(lambda: sandbox.petya.deliveries("conv-1"))
    ws.close()

    heygen_tokens = list(sandbox.heygen.tokens)
    secrets = [sandbox.heygen.api_key, sandbox.settings.petya_auth_token, sandbox.settings.gateway_secret,
               client.api_key, "other-customer-key", "wrong-key", token] + heygen_tokens
    assert heygen_tokens and all(len(s) >= 8 for s in secrets)
    bodies = b"".join(r.raw + str(dict(r.headers)).encode() for r in replies)
    for secret in secrets[:-1 - len(heygen_tokens)] + heygen_tokens:
        assert secret.encode() not in bodies, secret
    # The gateway logs requests through gateway.access; tornado.access lines come from the emulators' own apps.
    logged = "\n".join(record.getMessage() + str(record.exc_info or "") for record in caplog.records
                       if record.name != "tornado.access")
    assert "GET /v1/ws/streaming.chat" in logged or "streaming.chat" in logged
    for secret in secrets:
        assert secret not in logged, secret
    # The customer's key never went to HeyGen, in any request.
    for request in sandbox.heygen.recorder.requests:
        assert client.api_key not in str(request.headers) + request.body.decode() + request.query
