"""A sandbox served from a background thread on its own asyncio loop, for tests whose client is synchronous (the
hypothesis fuzzer, schemathesis): they send real HTTP from the test thread."""
import asyncio
import threading
import uuid

from sandbox.stack import Sandbox


class ThreadedSandbox:
    def __init__(self, mongodb_uri, name, **settings):
        self.mongodb_uri, self.name, self.settings = mongodb_uri, name, settings
        self.loop = self.sandbox = self.thread = None
        self.url = self.port = None

    def start(self):
        ready, failure = threading.Event(), []

        def run():
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            try:
                # No LiveKit rooms: the fuzzers join none. (Not for the global random: that is isolated for every
                # test in tests/helpers/random_isolation.py, and a room server here draws nothing from it.)
                self.sandbox = self.loop.run_until_complete(Sandbox(
                    self.mongodb_uri, database=f"t_{self.name}_" + uuid.uuid4().hex[:8], rooms=False,
                    **self.settings).start())
            except BaseException as exc:  # reported to the test thread
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="sandbox-loop", daemon=True)
        self.thread.start()
        assert ready.wait(60), "the sandbox did not start"
        if failure:
            raise failure[0]
        self.url, self.port = self.sandbox.gateway_url, self.sandbox.gateway.port
        return self

    def call_in_loop(self, coroutine_fn, timeout=30):
        """Run `coroutine_fn()` on the sandbox's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine_fn(), self.loop).result(timeout)

    def stop(self):
        if self.sandbox is not None:
            self.call_in_loop(self.sandbox.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
