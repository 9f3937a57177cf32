"""Fixtures of the fault tests: gateways as real processes."""
import pytest

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
