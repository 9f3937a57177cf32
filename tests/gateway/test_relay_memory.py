"""What an idle relayed socket keeps in the gateway (issue 18; bench part 3 measures it): once a pump holds both legs,
nothing that only its handshake needed, and each of its per-socket objects' attributes in its class's shared key
table (clients/tornado_compat.py share_keys), also when sockets open at once, as on a busy gateway."""
import asyncio
import sys

import pytest
from tornado.websocket import websocket_connect

from clients.tornado_compat import CONNECTION_KEYS, HANDLER_KEYS, PROTOCOL_KEYS
from tests.helpers.client import GatewayClient, eventually
from tests.helpers.flows import open_session, read_events, socket_says, ws_url

SOCKETS = 6
# An instance's attributes in its class's shared key table take ~300 bytes (the values alone, CPython 3.11); a dict of
# its own for the ~30 that tornado sets takes 1584.
SHARED = 600


async def opened_at_once(sandbox, client, count):
    """`count` sessions, their sockets opened concurrently: [(session_id, browser socket)]."""
    made = [await open_session(client, conversation_id=f"conv-{i}") for i in range(count)]
    browsers = await asyncio.gather(*(websocket_connect(ws_url(sandbox, session["session_id"], token))
                                      for token, session in made))
    return [(session["session_id"], ws) for (_, session), ws in zip(made, browsers)]


@pytest.mark.parametrize("pump", ["fast", "plain"])
@pytest.mark.gen_test(timeout=30)
async def test_an_idle_relayed_socket_keeps_nothing_of_its_handshake(make_sandbox, pump):
    sandbox = await make_sandbox(RELAY_PUMP=pump)
    sandbox.heygen.max_sessions = SOCKETS
    sockets = await opened_at_once(sandbox, GatewayClient(sandbox.gateway_url), SOCKETS)
    relays = list(sandbox.gateway.relays)
    assert len(relays) == SOCKETS
    await eventually(lambda: all(relay.request.connection is None for relay in relays))  # each pump has its legs
    for relay in relays:
        request = relay.request
        assert request.server_connection is None and not request.headers and request.query == ""
        assert not request.arguments and not request.query_arguments and not request.files
        assert (request.method, request.path) == ("GET", "/v1/ws/streaming.chat")  # for log lines
        assert request.uri.startswith("/v1/ws/streaming.chat?session_id=")
        assert relay.ui is None and not relay.path_args and not relay.open_kwargs
        assert set(vars(relay)) <= set(HANDLER_KEYS)  # the handler's own attributes are in slots
        assert sys.getsizeof(vars(relay)) < SHARED
        if pump == "fast":  # the upstream connection and both legs are the gateway's own subclasses
            upstream = relay.upstream
            assert upstream.request is upstream.connection is upstream.stream is upstream.parsed is None
            for leg, keys in ((upstream, CONNECTION_KEYS), (relay.ws_connection, PROTOCOL_KEYS),
                              (upstream.protocol, PROTOCOL_KEYS)):
                assert set(vars(leg)) <= set(keys), type(leg).__name__
                assert sys.getsizeof(vars(leg)) < SHARED, type(leg).__name__

    # And they relay as before: frames both ways, words recorded, closes passed on.
    session_id, ws = sockets[0]
    await ws.write_message(b"\x01\x02\x03", binary=True)
    received = sandbox.heygen.sessions[session_id].ws_received
    await eventually(lambda: (True, b"\x01\x02\x03") in received)
    await socket_says(sandbox, session_id, "hello from the avatar")
    events = await read_events(ws, "avatar_end_message")
    assert "hello from the avatar" in "".join(e.get("message", "") for e in events)
    for _, ws in sockets:
        ws.close(4003, "bye")
    for session_id, _ in sockets:
        closes = sandbox.heygen.sessions[session_id].ws_closes
        await eventually(lambda closes=closes: closes == [(4003, "bye")])
    await eventually(lambda: len(sandbox.gateway.relays) == 0)
