"""How sessions end and how their transcripts reach Petya.

- `end()` claims the end of a session atomically (one winner across processes), stops it upstream unless the
  caller already did, and queues the flush in MongoDB before trying to deliver it.
- A flush is leased before delivery, retried with backoff while Petya is down or answers 5xx (also after a
  restart: the state is in MongoDB), and kept with its error when Petya rejects it (4xx).
- A periodic sweep (safe in several processes at once: every end is claimed atomically) ends sessions whose
  sockets closed longer than the grace period ago without a stop, reaps sessions gone quiet for SESSION_IDLE_TIMEOUT
  or older than SESSION_MAX_AGE (stopping them upstream: a leaked session holds one of our few concurrent slots),
  and delivers every due flush.
"""
import asyncio
import logging

from tornado.ioloop import PeriodicCallback

from models.errors import GatewayError
from models.transcript import for_petya

log = logging.getLogger("gateway.lifecycle")


class Lifecycle:
    def __init__(self, sessions, providers, petya, settings):
        self.sessions = sessions
        self.providers = providers  # provider name -> client with stop_session() and final_turns()
        self.petya = petya
        self.settings = settings
        self.lease_seconds = 2 * settings.upstream_request_timeout + 5
        self._tasks = set()
        self._periodic = None
        self._sweeping = False
        self._closed = False

    # --- background work ------------------------------------------------------------------------------------------

    def spawn(self, coroutine):
        if self._closed:  # shutting down: what is left is found in MongoDB by the next sweep (here or elsewhere)
            coroutine.close()
            return None
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task):
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed: %r", task.exception())

    def start(self):
        self._periodic = PeriodicCallback(lambda: self.spawn(self.sweep()),
                                          self.settings.sweep_interval * 1000)
        self._periodic.start()
        self.spawn(self.sweep())  # flushes left pending by a previous run

    async def close(self, timeout=None):
        if self._periodic:
            self._periodic.stop()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        self._closed = True
        for task in list(self._tasks):
            task.cancel()

    # --- ending a session -----------------------------------------------------------------------------------------

    async def end(self, session_id, reason, stop_upstream=True, abandoned_before=None):
        """End a session once: True for the caller that won the claim."""
        session = await self.sessions.claim_end(session_id, reason, abandoned_before=abandoned_before)
        if session is None:
            return False
        log.info("session %s ended (%s)", session_id, reason)
        if stop_upstream:
            await self.stop_upstream(session, reason)
        self.spawn(self.deliver(session_id))
        return True

    async def stop_upstream(self, session, reason):
        try:
            response = await self.providers[session.provider].stop_session(session, reason)
            if not response.ok:
                await self.sessions.note_stop_error(session.session_id, f"upstream stop answered {response.status}")
        except GatewayError as exc:
            log.warning("could not stop %s session %s upstream: %s", session.provider, session.session_id, exc)
            await self.sessions.note_stop_error(session.session_id, exc.message)

    # --- flush ----------------------------------------------------------------------------------------------------

    async def deliver(self, session_id=None):
        """Deliver one due flush (this session's, or any): True when Petya took it, False when it did not,
        None when no flush was due."""
        session = await self.sessions.lease_flush(self.lease_seconds, session_id)
        if session is None:
            return None
        recorded = await self.sessions.transcript(session.session_id)
        try:
            turns, note = await self.providers[session.provider].final_turns(session, recorded)
        except GatewayError as exc:
            turns, note = recorded, f"provider transcript unavailable: {exc.message}"
        outcome = await self.petya.post_status(session.conversation_id, session.session_id, for_petya(turns))
        if outcome.delivered:
            await self.sessions.flush_done(session.session_id, note)
            log.info("transcript of %s delivered to Petya (%d turns)", session.session_id, len(turns))
            return True
        if outcome.retry:
            delay = min(self.settings.flush_retry_initial * 2 ** (session.flush_attempts - 1),
                        self.settings.flush_retry_max)
            await self.sessions.flush_retry(session.session_id, delay, outcome.error)
            log.warning("flush of %s failed (%s); retry in %.1fs", session.session_id, outcome.error, delay)
        else:
            await self.sessions.flush_rejected(session.session_id, outcome.error)
            log.error("flush of %s rejected: %s", session.session_id, outcome.error)
        return False

    async def sweep(self):
        if self._sweeping:
            return
        self._sweeping = True
        try:
            now = self.sessions.clock()
            before = now - self.settings.socket_grace_period
            for session_id in await self.sessions.abandoned(before):
                await self.end(session_id, "socket_closed", abandoned_before=before)
            quiet = await self.sessions.quiet(idle_before=now - self.settings.session_idle_timeout,
                                              born_before=now - self.settings.session_max_age)
            for session_id, reason in quiet:
                await self.end(session_id, reason)
            while await self.deliver() is not None:
                pass
        except Exception:  # the next sweep tries again; never let one failure stop the loop
            log.exception("sweep failed")
        finally:
            self._sweeping = False
