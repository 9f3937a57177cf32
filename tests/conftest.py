"""Shared fixtures: a real MongoDB wire-protocol server for the whole run, and the sandbox world (emulators, the
Petya reference and a gateway, on loopback) per test. The helpers tests import live in tests/helpers/."""
import os
import uuid

import pytest

from sandbox.mongo import MongoServer
from sandbox.stack import Sandbox
from tests.helpers import random_isolation
from tests.helpers.client import FAST, GatewayClient

# --- the global random: hypothesis's alone ---------------------------------------------------------------------------

# hypothesis fails a test as flaky when Python's global `random` changes while it generates (another thread drawing).
# The libraries that draw from it in this process (pymongo's operation ids under command monitoring, aiortc's and
# aioice's jitter, ...) get generators of their own, and every test is checked to leave the global one as it found
# it, so tests run in any order (tests/helpers/random_isolation.py).
random_isolation.isolate()


def pytest_configure(config):
    config.pluginmanager.register(random_isolation.GlobalRandomGuard(), "global-random-guard")


@pytest.fixture(scope="session")
def mongodb_server_uri(tmp_path_factory):
    """MONGODB_URI when set, else a SecantusDB server started for this test run."""
    if os.environ.get("MONGODB_URI"):
        yield os.environ["MONGODB_URI"]
        return
    server = MongoServer(tmp_path_factory.mktemp("mongodb")).start()
    try:
        yield server.uri
    finally:
        server.stop()


@pytest.fixture
def db_name():
    """A database name of this test's own, so tests never see each other's data."""
    return "t_" + uuid.uuid4().hex[:12]


# --- the sandbox world: emulators + Petya reference + gateway, on loopback ---------------------------------------

@pytest.fixture
def make_sandbox(io_loop, mongodb_server_uri, db_name):
    """`await make_sandbox(**settings)` starts a sandbox with some settings changed; all are stopped after the test."""
    made = []

    async def make(**settings):
        sandbox = Sandbox(mongodb_server_uri, database=db_name, **{**FAST, **settings})
        sandbox.heygen.seconds_per_word = 0.01  # the HeyGen avatar speaks fast in tests (browser tests slow it)
        made.append(sandbox)
        return await sandbox.start()

    yield make
    for sandbox in reversed(made):
        io_loop.run_sync(sandbox.stop)


@pytest.fixture
def sandbox(io_loop, make_sandbox):
    return io_loop.run_sync(make_sandbox)


@pytest.fixture
def client(sandbox):
    return GatewayClient(sandbox.gateway_url)
