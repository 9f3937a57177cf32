"""`GET /metrics`: this process's metrics (models.metrics) in Prometheus text format, or OpenMetrics when the
scraper asks for it (Accept)."""
from prometheus_client.exposition import choose_encoder

from handlers.base import BaseHandler


class MetricsHandler(BaseHandler):
    async def get(self):
        metrics = self.gateway.metrics
        await metrics.refresh()  # live sessions: from MongoDB at most every LIVE_SESSIONS_TTL seconds
        encoder, content_type = choose_encoder(self.request.headers.get("Accept", ""))
        self.set_header("Content-Type", content_type)
        self.finish(encoder(metrics.registry))
