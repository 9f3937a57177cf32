"""Access tokens: LiveKit JWTs under the server's API key and secret (livekit-api mints and verifies them), and where
a request carries one."""
import datetime
import secrets

from livekit import api

DEFAULT_API_KEY = "sandbox-livekit-key"
TOKEN_TTL = 3600  # seconds, default lifetime of the tokens `RoomServer.token` mints


class TokenError(Exception):
    """A missing, invalid or insufficient access token."""


class AccessTokens:
    """The tokens of one API key and secret (a random secret unless given); the RoomServer's base."""

    def __init__(self, api_key=DEFAULT_API_KEY, api_secret=None):
        self.api_key = api_key
        self.api_secret = api_secret or secrets.token_urlsafe(32)
        self._verifier = api.TokenVerifier(self.api_key, self.api_secret)

    def token(self, room, identity, name="", metadata="", ttl=TOKEN_TTL, can_publish=True, can_subscribe=True,
              can_publish_data=True, attributes=None):
        """A LiveKit access token (JWT) to join `room` as `identity`."""
        grants = api.VideoGrants(room_join=True, room=room, can_publish=can_publish, can_subscribe=can_subscribe,
                                 can_publish_data=can_publish_data)
        token = (api.AccessToken(self.api_key, self.api_secret).with_identity(identity).with_name(name)
                 .with_metadata(metadata).with_ttl(datetime.timedelta(seconds=ttl)).with_grants(grants))
        if attributes:
            token = token.with_attributes(attributes)
        return token.to_jwt()

    def verify(self, token):
        """The claims of a token that may join a room; TokenError otherwise."""
        if not token:
            raise TokenError("no access token")
        try:
            claims = self._verifier.verify(token)
        except Exception as exc:  # jwt's errors, and malformed grants
            raise TokenError(f"invalid access token: {exc}") from None
        if not claims.video.room_join or not claims.video.room or not claims.identity:
            raise TokenError("the token grants no room join (room_join, room and identity are needed)")
        return claims


class TokenArguments:
    """What both signalling handlers and the validate endpoint read from a request."""

    def access_token(self):
        auth = self.request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return self.get_query_argument("access_token", "")
