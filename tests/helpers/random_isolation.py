"""Nothing but hypothesis draws from Python's global `random` while the tests run.

hypothesis checks the global random around every draw of its strategies: a change it did not make is "the `random`
module used inside a strategy", a HypothesisDeprecationWarning (an error here: pytest.ini turns warnings into errors),
so a test fails as flaky whenever another thread draws while hypothesis generates. Measured (a tracer of every call
into `random._inst`, thread and stack, over a full run in file order with no ordering hook), the drawers in this
process are:

- pymongo: an operation id (`pymongo.message._randint`, from `pymongo._telemetry._generate_op_id_or_none`) for every
  command once a command listener is registered or the `pymongo.command` / `pymongo.serverSelection` loggers are
  enabled for DEBUG. tests/gateway/test_lifecycle.py registers a listener process-wide (pymongo cannot unregister
  one), so from then on every MongoDB command draws, in the gateway's `mongo_*` executor threads, `petya-reference_*`
  and the loop thread; in tests/gateway/test_openapi.py that is the threaded sandbox's threads while schemathesis
  generates in the test's: the failure. Also `helpers_shared._backoff` (retry jitter, seen while MongoDB is
  unreachable), and, not reached by the suite, server selection among several servers, transaction retries, SRV
  records.
- aiortc: `RTCRtpSender._run_rtcp` and `RTCRtpReceiver._run_rtcp` (RTCP interval jitter), `codecs.vpx.Vp8Encoder` (its
  first picture id). aioice: `Connection.query_consent` (consent interval jitter). All on the room server's loop while
  a client is connected; none after a test ends (its loop is closed: no task runs again, no thread is left).
- livekit (the Python SDK): `rtc._utils.generate_random_base62` (data stream ids); not reached by the suite.

`isolate()` gives each of those modules a `random.Random()` of its own (seeded from os.urandom, as the global one is),
in place of the name it draws through: `<module>.random` (the stdlib module it imported) or, for a `from random import
x`, `<module>.x`. The libraries behave as before; only whose generator advances differs.
tests/unit/test_random_isolation.py fails when a library changes under this table (an attribute gone, a new drawing
module, a name a Random lacks).

`GlobalRandomGuard` (registered by conftest.py) is the net for drawers not in the table: every test fails at teardown
when the global random's state after it (setup, call, teardown) differs from the state before it, and a test fails at
setup when the state changed between the previous test and this one (something left running). hypothesis restores the
state it seeds, so its tests pass the check.
"""
import importlib
import random

import pytest

# (module, the name it draws through) -> what is drawn. The name is the stdlib `random` module the library imported,
# or a bound method of the global instance it imported by name.
PATCHED = {
    ("aiortc.rtcrtpsender", "random"): "RTCP interval jitter (RTCRtpSender._run_rtcp)",
    ("aiortc.rtcrtpreceiver", "random"): "RTCP interval jitter (RTCRtpReceiver._run_rtcp)",
    ("aiortc.codecs.vpx", "random"): "the VP8 encoder's first picture id (Vp8Encoder.__init__)",
    ("aioice.ice", "random"): "consent check jitter (Connection.query_consent)",
    ("pymongo.message", "random"): "request and operation ids (_randint) with command monitoring or DEBUG logs",
    ("pymongo.helpers_shared", "random"): "retry backoff jitter (_backoff)",
    ("pymongo.topology_description", "sample"): "the SRV hosts polled (_updated_topology_description_srv_polling)",
    ("pymongo.synchronous.topology", "random"): "server selection among several (Topology._select_server)",
    ("pymongo.synchronous.client_session", "random"): "transaction retry jitter (with_transaction)",
    ("pymongo.synchronous.srv_resolver", "random"): "the SRV hosts used (_get_srv_response_and_hosts)",
    ("pymongo.asynchronous.topology", "random"): "server selection among several (Topology._select_server)",
    ("pymongo.asynchronous.client_session", "random"): "transaction retry jitter (with_transaction)",
    ("pymongo.asynchronous.srv_resolver", "random"): "the SRV hosts used (_get_srv_response_and_hosts)",
    ("livekit.rtc._utils", "random"): "data stream ids (generate_random_base62)",
}

# The libraries whose every drawing module must be in PATCHED (tests/unit/test_random_isolation.py scans their source).
LIBRARIES = ("aiortc", "aioice", "pymongo", "livekit.rtc")

GENERATORS = {}  # module name -> its own random.Random


def isolate():
    """Give every module in PATCHED a generator of its own. Idempotent; raises if a library no longer matches."""
    for module_name, name in PATCHED:
        module = importlib.import_module(module_name)
        current = getattr(module, name, None)
        own = GENERATORS.get(module_name)
        if own is not None and (current is own or getattr(current, "__self__", None) is own):
            continue
        if name == "random":
            if current is not random:
                raise RuntimeError(f"{module_name}.random is {current!r}, not the stdlib random module: the library "
                                   "changed, revisit tests/helpers/random_isolation.py")
            own = GENERATORS[module_name] = random.Random()
            setattr(module, name, own)
        else:
            if getattr(current, "__self__", None) is not random._inst:
                raise RuntimeError(f"{module_name}.{name} is {current!r}, not the global random's {name}: the "
                                   "library changed, revisit tests/helpers/random_isolation.py")
            own = GENERATORS[module_name] = random.Random()
            setattr(module, name, getattr(own, name))


class GlobalRandomDrawn(AssertionError):
    pass


class GlobalRandomGuard:
    """A pytest plugin: fails the test during which (or before which) the global random's state changed."""

    HINT = ("Something outside hypothesis draws from Python's global `random`; hypothesis fails any test as flaky "
            "when that happens while it generates. Give the library a generator of its own in "
            "tests/helpers/random_isolation.py (PATCHED), or use random.Random(seed) in the test.")

    def __init__(self):
        self.before = None  # the state when the current test's setup began
        self.last = None  # the state when the previous test's teardown ended
        self.last_test = None

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item):
        self.before = random.getstate()
        if self.last is not None and self.before != self.last:
            self.last = self.before
            raise GlobalRandomDrawn(f"the global random changed between the end of {self.last_test} and the start "
                                    f"of {item.nodeid}: something left running draws from it. {self.HINT}")
        return (yield)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item, nextitem):
        try:
            result = yield
        finally:
            after, before = random.getstate(), self.before
            self.last, self.last_test, self.before = after, item.nodeid, None
        if before is not None and after != before:
            raise GlobalRandomDrawn(f"{item.nodeid} changed the global random (its setup, call or teardown). "
                                    f"{self.HINT}")
        return result
