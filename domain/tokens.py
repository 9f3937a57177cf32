"""Gateway session tokens: what the browser holds in place of a provider's session token.

They are JWT-shaped (HS256, under a key derived from GATEWAY_SECRET) because LiveAvatar's web SDK decodes its
session token as a JWT and reads `start_session_data` from it (docs/upstream.md#liveavatar-token-claims); with
anything else it logs a warning quoting the token's first characters and falls back to defaults. A token carries only
non-secret claims: issuer, the contract it was minted for (claim `provider`), times, a random `jti`, and whatever
claims of the provider's own token its contract mirrors (LiveAvatar's: `start_session_data`, `session_id`). Never the
provider's token or a key: those stay server-side, in the token's record, found by the token's hash.

Tokens minted before this form (`ilgt_…`, opaque) keep working until they expire: they are looked up the same way.
"""
from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

LEGACY_PREFIX = "ilgt_"
ISSUER = "ilianaai-avatar"
KEY_ID = "ilgt1"  # in the header: tells our tokens from a customer API key sent as a Bearer
_HEADER = {"alg": "HS256", "typ": "JWT", "kid": KEY_ID}


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT-shaped token, unverified (a provider's token, read for what we may mirror), or {}."""
    try:
        claims = json.loads(_b64decode(token.split(".")[1]))
    except (IndexError, ValueError, binascii.Error, UnicodeDecodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


def mirrored(upstream_token: str | None, names: tuple[str, ...]) -> dict[str, Any]:
    """The claims `names` of a provider's token, where it has them."""
    claims = jwt_claims(upstream_token) if upstream_token else {}
    return {name: claims[name] for name in names if name in claims}


def token_hash(token: str) -> str:
    """What a token's record is found by: the token itself is never stored."""
    return hashlib.sha256(token.encode()).hexdigest()


@functools.lru_cache(maxsize=4096)  # keys seen lately: an HMAC per request was a percent of a proxied call's CPU
def customer_id(secret: str, api_key: str) -> str:
    """A stable id for a customer's API key; the key itself is never stored."""
    return hmac.new(secret.encode(), api_key.encode(), hashlib.sha256).hexdigest()


class TokenSigner:
    def __init__(self, secret: str, clock: Callable[[], float] = time.time) -> None:
        # A key of its own, so a token never reveals anything about the key that derives customer ids.
        self.key = hmac.new(secret.encode(), b"ilianaai-avatar gateway session tokens v1", hashlib.sha256).digest()
        self.clock = clock

    def mint(self, contract: str, ttl: float, claims: dict[str, Any] | None = None) -> str:
        """A new token for `contract`, valid `ttl` seconds, carrying `claims` besides its own."""
        now = int(self.clock())
        body: dict[str, Any] = {"iss": ISSUER, "provider": contract, "iat": now, "exp": now + int(ttl),
                                "jti": secrets.token_urlsafe(24)}
        body.update(claims or {})
        signing_input = _b64encode(json.dumps(_HEADER, separators=(",", ":")).encode()) + "." + _b64encode(
            json.dumps(body, separators=(",", ":")).encode())
        return signing_input + "." + self._signature(signing_input)

    def _signature(self, signing_input: str) -> str:
        return _b64encode(hmac.new(self.key, signing_input.encode(), hashlib.sha256).digest())

    @staticmethod
    def is_gateway_token(value: str) -> bool:
        """Whether a Bearer value is one of our tokens (valid or not) rather than an API key."""
        if value.startswith(LEGACY_PREFIX):
            return True
        if value.count(".") != 2:
            return False
        try:
            header = json.loads(_b64decode(value.split(".", 1)[0]))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return False
        return isinstance(header, dict) and header.get("kid") == KEY_ID

    def verify(self, token: str) -> bool:
        """False for a JWT-shaped token whose signature or expiry is wrong (no database lookup needed); True for
        one that may be looked up (a valid one, or a legacy opaque token)."""
        if token.startswith(LEGACY_PREFIX):
            return True
        signing_input, _, signature = token.rpartition(".")
        if not hmac.compare_digest(signature.encode(), self._signature(signing_input).encode()):
            return False
        exp = jwt_claims(token).get("exp")
        return isinstance(exp, int) and exp > self.clock()
