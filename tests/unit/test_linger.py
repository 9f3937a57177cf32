"""handlers/linger.py's Lingering on its own, over loopback TCP with small bounds: the half-close, each bound, the
client's close, the cap on lingering connections, close_all. (The gateway's real clients: tests/gateway/
test_lingering_close.py.)"""
import asyncio
import socket
import time

import pytest

from conf import GROUPS
from handlers import linger
from handlers.linger import Lingering


def tcp_pair():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    server.setblocking(False)
    return server, client


async def until(condition, timeout=5.0):
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "timed out"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@pytest.mark.gen_test
async def test_half_closes_then_closes_when_the_client_does():
    lingering = Lingering(seconds=5, idle=5, max_bytes=1 << 20)
    server, client = tcp_pair()
    server.sendall(b"the answer")
    assert lingering.take(server)
    client.settimeout(1)
    assert client.recv(100) == b"the answer" and client.recv(100) == b""  # the answer, then the FIN
    client.sendall(b"more body" * 1000)
    client.close()
    assert await until(lambda: not lingering.connections) < 1
    assert server.fileno() == -1  # closed


@pytest.mark.gen_test
async def test_each_bound_closes_it():
    # bytes
    lingering = Lingering(seconds=5, idle=5, max_bytes=100_000)
    server, client = tcp_pair()
    assert lingering.take(server)
    client.settimeout(2)
    with pytest.raises(ConnectionError):
        for _ in range(1000):
            client.sendall(b"x" * 10_000)
            await asyncio.sleep(0.001)
    assert not lingering.connections
    client.close()
    # idle: a byte now and then, less often than `idle`
    lingering = Lingering(seconds=5, idle=0.3, max_bytes=1 << 20)
    server, client = tcp_pair()
    assert lingering.take(server)
    assert 0.25 < await until(lambda: not lingering.connections) < 0.8
    client.close()
    # total: a byte more often than `idle`, for longer than `seconds`
    lingering = Lingering(seconds=0.6, idle=0.3, max_bytes=1 << 20)
    server, client = tcp_pair()
    assert lingering.take(server)
    started = time.monotonic()
    while lingering.connections and time.monotonic() - started < 3:
        client.send(b"x")
        await asyncio.sleep(0.05)
    assert 0.55 < time.monotonic() - started < 1.0
    client.close()


@pytest.mark.gen_test
async def test_past_the_cap_and_on_a_broken_socket_the_caller_closes_at_once_and_close_all_ends_the_rest():
    lingering = Lingering(seconds=5, idle=5, max_bytes=1 << 20, max_connections=2)
    pairs = [tcp_pair() for _ in range(3)]
    assert [lingering.take(server) for server, _ in pairs] == [True, True, False]
    assert pairs[2][0].fileno() != -1  # left to the caller
    broken, peer = tcp_pair()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    peer.close()  # a reset
    await asyncio.sleep(0.05)
    lingering.close_all()
    assert not lingering.connections and all(server.fileno() == -1 for server, _ in pairs[:2])
    for server, client in pairs:
        server.close()
        client.close()
    other = Lingering()
    if other.take(broken):  # the reset may or may not have reached shutdown(): either way nothing raises
        await until(lambda: not other.connections)  # and the reset is read at once
    broken.close()


def test_the_bounds_the_settings_doc_names_are_the_bounds():
    doc = next(s.doc for g in GROUPS for s in g.settings if s.name == "MAX_BODY_SIZE")
    assert f"{linger.LINGER_SECONDS:g} s and {linger.LINGER_BYTES >> 20} MiB" in doc, doc
