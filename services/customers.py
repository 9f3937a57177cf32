"""Who is calling: a customer by its API key (its avatar config from Petya, cached) or by a gateway token."""
from __future__ import annotations

from clients.petya import PetyaClient
from domain.errors import Unauthorized
from domain.records import Customer
from domain.tokens import TokenSigner, customer_id
from services.sessions import Sessions

MAX_KEY_LENGTH = 512


def _plausible_key(key: str) -> bool:
    return len(key) <= MAX_KEY_LENGTH and key.isascii() and key.isprintable()


class Customers:
    def __init__(self, secret: str, signer: TokenSigner, sessions: Sessions, petya: PetyaClient) -> None:
        self.secret = secret  # GATEWAY_SECRET: the key of the HMAC that makes customer ids
        self.signer = signer
        self.sessions = sessions
        self.petya = petya

    async def authenticate(self, api_key: str | None, token: str | None, allow_token: bool = True,
                           contract: str | None = None) -> Customer:
        """The calling customer; Unauthorized for a missing or unknown key or token, or a token of another contract
        than `contract` (when given)."""
        if token and allow_token:
            record = await self.sessions.find_token(token) if self.signer.verify(token) else None
            if record is None:
                raise Unauthorized("invalid or expired session token")
            if contract and record.served_contract != contract:
                raise Unauthorized(f"this session token is not valid for {contract}")
            return Customer(id=record.customer, config=dict(record.config or {}), token=record)
        if not api_key:
            raise Unauthorized("missing API key: send X-Api-Key or Authorization: Bearer")
        if not _plausible_key(api_key):  # it goes into a header to Petya: printable ASCII only
            raise Unauthorized("invalid API key")
        cid = customer_id(self.secret, api_key)
        config = await self.petya.get_config(api_key, cid)
        return Customer(id=cid, config=config)
