"""Gateway session tokens: JWT-shaped and signed, carrying only the non-secret claims the SDKs read."""
import base64
import json
import time

import pytest

from domain.tokens import KEY_ID, TokenSigner, jwt_claims
from tests.helpers.client import eventually
from tests.helpers.flows import bearer, minted, open_session


def segments(token):
    header, claims, _ = token.split(".")
    decode = lambda part: json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))  # noqa: E731
    return decode(header), decode(claims)


@pytest.mark.gen_test(timeout=30)
async def test_liveavatar_token_mirrors_start_session_data_and_nothing_secret(sandbox, client):
    session_id, token = await minted(client, "jwt-1")
    upstream = sandbox.liveavatar.sessions[session_id].token
    header, claims = segments(token)
    assert header == {"alg": "HS256", "typ": "JWT", "kid": KEY_ID}
    # What LiveAvatar's web SDK reads from its token, as LiveAvatar's own token says it.
    assert claims["start_session_data"] == jwt_claims(upstream)["start_session_data"]
    assert claims["start_session_data"]["mode"] == "FULL"
    assert claims["session_id"] == session_id and claims["provider"] == "liveavatar"
    assert claims["exp"] - claims["iat"] == int(sandbox.settings.token_ttl)
    for secret in (upstream, sandbox.liveavatar.api_key, sandbox.settings.gateway_secret, client.api_key):
        assert secret not in token and secret not in json.dumps(claims)
    # It works as the SDK uses it.
    assert (await client.call("/v1/sessions/start", api_key=None, headers=bearer(token))).status == 201


@pytest.mark.gen_test(timeout=30)
async def test_heygen_token_is_jwt_shaped_and_carries_no_heygen_token(sandbox, client):
    token, _ = await open_session(client)
    _, claims = segments(token)
    assert set(claims) == {"iss", "provider", "iat", "exp", "jti"} and claims["provider"] == "heygen"
    assert not any(heygen_token in token for heygen_token in sandbox.heygen.tokens)


@pytest.mark.gen_test(timeout=30)
async def test_forged_tampered_and_expired_tokens_are_401(sandbox, client):
    _, token = await minted(client, "jwt-2")
    header, claims, signature = token.split(".")
    other_key = TokenSigner("another-gateway-secret-0123456789").mint("liveavatar", 60)
    tampered_claims = base64.urlsafe_b64encode(json.dumps(
        {**segments(token)[1], "provider": "heygen"}).encode()).rstrip(b"=").decode()
    expired = TokenSigner(sandbox.settings.gateway_secret, clock=lambda: time.time() - 7200).mint("liveavatar", 60)
    for bad in (other_key, f"{header}.{tampered_claims}.{signature}", expired, f"{header}.{claims}.{signature[:-2]}"):
        reply = await client.call("/v1/sessions/keep-alive", api_key=None, headers=bearer(bad))
        assert reply.status == 401, bad
    assert (await client.call("/v1/sessions/keep-alive", api_key=None, headers=bearer(token))).status == 200


@pytest.mark.gen_test(timeout=30)
async def test_a_legacy_opaque_token_keeps_working_until_it_expires(sandbox, client):
    session_id, _ = await minted(client, "jwt-legacy")
    upstream = sandbox.liveavatar.sessions[session_id].token
    customer = (await sandbox.gateway.sessions.get(session_id)).customer
    legacy = "ilgt_" + "L" * 43  # as minted before tokens were JWT-shaped
    await save_legacy_record(sandbox, legacy, customer, upstream, 60, session_id)
    assert (await client.call("/v1/sessions/start", api_key=None, headers=bearer(legacy))).status == 201
    stop = await client.call("/v1/sessions/stop", api_key=None, headers=bearer(legacy))
    assert stop.status == 200
    await eventually(lambda: sandbox.petya.deliveries("jwt-legacy"))
    expired = "ilgt_" + "E" * 43
    await save_legacy_record(sandbox, expired, customer, upstream, -1, session_id)
    assert (await client.call("/v1/sessions/keep-alive", api_key=None, headers=bearer(expired))).status == 401


async def save_legacy_record(sandbox, token, customer, upstream, ttl, session_id):
    """A token's record as the gateway stored it before contracts were recorded (no `contract` field)."""
    from domain.tokens import token_hash
    from models.documents import GatewayToken
    now = time.time()
    await sandbox.gateway.store.run(sandbox.gateway.store.collection(GatewayToken).insert_one, {
        "token_hash": token_hash(token), "customer": customer, "provider": "liveavatar", "upstream_token": upstream,
        "config": {}, "session_id": session_id, "created_at": now, "expires_at": now + ttl})
