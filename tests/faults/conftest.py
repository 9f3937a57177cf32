"""Fixtures of the fault tests: gateways as real processes."""
import pytest

from sandbox.stack import Sandbox
from tests.helpers.processes import GatewayProcess, in_background


@pytest.fixture
def processes(tmp_path):
    """`await processes(env, name)`: a gateway process started with `env`; all are terminated after the test."""
    started = []

    async def start(env, name):
        gateway = GatewayProcess(env, str(tmp_path / f"{name}.log"))
        started.append(gateway)
        return await in_background(gateway.start)

    yield start
    for gateway in started:
        gateway.terminate()


@pytest.fixture
def world(io_loop, mongodb_server_uri, db_name):
    """`world(gateway_mongodb_uri=None, **settings)`: the emulators and the Petya reference in this process (Petya on
    the test run's MongoDB); gateways are started by each test as processes. (A module may define its own.)"""
    made = []

    def make(gateway_mongodb_uri=None, **settings):
        uri = gateway_mongodb_uri or mongodb_server_uri
        sandbox = Sandbox(uri, database=db_name, petya_mongodb_uri=mongodb_server_uri, **settings)
        sandbox.heygen.seconds_per_word = 0.01  # the avatar speaks fast in tests
        sandbox.start_upstreams()
        made.append(sandbox)
        return sandbox

    yield make
    for sandbox in made:
        io_loop.run_sync(sandbox.stop)
