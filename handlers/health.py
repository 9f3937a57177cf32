"""Liveness for nginx and supervisor: answers 200 when MongoDB answers."""
from mongoengine.connection import get_db

from handlers.base import BaseHandler
from models.errors import ServiceUnavailable
from models.store import RETRY_AFTER


class HealthHandler(BaseHandler):
    async def get(self):
        try:
            await self.gateway.store.run(lambda: get_db().command("ping"))
        except Exception:
            raise ServiceUnavailable("database unreachable", retry_after=RETRY_AFTER) from None
        self.send_json({"status": "ok"})
