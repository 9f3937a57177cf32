"""Gateway session tokens: what the browser holds in place of a provider's session token.

They are JWT-shaped (HS256, under a key derived from GATEWAY_SECRET) because LiveAvatar's web SDK decodes its
session token as a JWT and reads `start_session_data` from it; with anything else it logs a warning quoting the
token's first characters and falls back to defaults. A token carries only non-secret claims: issuer, provider, times,
a random `jti`, and — for LiveAvatar — the claims the SDK reads, mirrored from LiveAvatar's own token. Never the
provider's token or a key: those stay server-side, in the GatewayToken record found by the token's hash
(models.sessions).

Tokens minted before this form (`ilgt_…`, opaque) keep working until they expire: they are looked up the same way.
"""
import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time

LEGACY_PREFIX = "ilgt_"
ISSUER = "ilianaai-avatar"
KEY_ID = "ilgt1"  # in the header: tells our tokens from a customer API key sent as a Bearer
# Claims of LiveAvatar's session token that its web SDK reads (../shared/upstream-apis.md §7.5): non-secret.
MIRRORED_CLAIMS = ("start_session_data", "session_id")
_HEADER = {"alg": "HS256", "typ": "JWT", "kid": KEY_ID}


def _b64encode(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwt_claims(token):
    """The claims of a JWT-shaped token, unverified (a provider's token, read for what we may mirror), or {}."""
    try:
        claims = json.loads(_b64decode(token.split(".")[1]))
    except (IndexError, ValueError, binascii.Error, UnicodeDecodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


class TokenSigner:
    def __init__(self, secret, clock=time.time):
        # A key of its own, so a token never reveals anything about the key that derives customer ids.
        self.key = hmac.new(secret.encode(), b"ilianaai-avatar gateway session tokens v1", hashlib.sha256).digest()
        self.clock = clock

    def mint(self, provider, ttl, upstream_token=None):
        now = int(self.clock())
        claims = {"iss": ISSUER, "provider": provider, "iat": now, "exp": now + int(ttl),
                  "jti": secrets.token_urlsafe(24)}
        if provider == "liveavatar" and upstream_token:
            mirrored = jwt_claims(upstream_token)
            claims.update({name: mirrored[name] for name in MIRRORED_CLAIMS if name in mirrored})
        signing_input = _b64encode(json.dumps(_HEADER, separators=(",", ":")).encode()) + "." + _b64encode(
            json.dumps(claims, separators=(",", ":")).encode())
        return signing_input + "." + self._signature(signing_input)

    def _signature(self, signing_input):
        return _b64encode(hmac.new(self.key, signing_input.encode(), hashlib.sha256).digest())

    @staticmethod
    def is_gateway_token(value):
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

    def verify(self, token):
        """False for a JWT-shaped token whose signature or expiry is wrong (no database lookup needed); True for
        one that may be looked up (a valid one, or a legacy opaque token)."""
        if token.startswith(LEGACY_PREFIX):
            return True
        signing_input, _, signature = token.rpartition(".")
        if not hmac.compare_digest(signature.encode(), self._signature(signing_input).encode()):
            return False
        exp = jwt_claims(token).get("exp")
        return isinstance(exp, int) and exp > self.clock()
