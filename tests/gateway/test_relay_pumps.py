"""The relay's two pumps fed the same traffic: the plain one (relay/plain.py, tornado's public API) is the oracle of
the fast one (relay/pump.py, sockets taken from tornado). What the far ends receive, the close codes they see and the
turns the gateway records must be the same through both, and what was sent."""
import asyncio
import os

import pytest

from relay.pipecat import Frame
from tests.helpers.client import GatewayClient, eventually
from tests.helpers.flows import connected, socket_says
from tests.helpers.frames import masked_frames

BIG = os.urandom(200_000)


def text_frame(text):
    """What HeyGen's SDK sends for its default speak(): a pipecat Frame holding a TextFrame."""
    frame = Frame()
    frame.text.text = text
    return frame.SerializeToString()


def audio_frame(n):
    frame = Frame()
    frame.audio.audio = bytes([n % 256]) * 1024
    frame.audio.sampleRate, frame.audio.numChannels = 16000, 1
    return frame.SerializeToString()


BROWSER_SENDS = ["plain text", "é unicode ✓", audio_frame(1), text_frame("Hello from the plugin"), BIG,
                 audio_frame(2), b"\x00\xff" * 512]


async def traffic(make_sandbox, pump):
    """One session through a gateway on `pump`: the browser's messages (and a fragmented one, sent raw), HeyGen's
    events and a binary message back, then the browser closes. What each end and the gateway saw."""
    sandbox = await make_sandbox(RELAY_PUMP=pump)
    assert sandbox.gateway.fast_relay == (pump == "fast")
    client = GatewayClient(sandbox.gateway_url)
    session_id, _, ws = await connected(sandbox, client)
    heygen = sandbox.heygen.sessions[session_id]
    for message in BROWSER_SENDS:
        await ws.write_message(message, binary=isinstance(message, bytes))
    ws.protocol.stream.write(masked_frames((1, b"frag", False), (0, b"mented", True)))
    await eventually(lambda: len(heygen.ws_received) >= len(BROWSER_SENDS) + 1)
    await socket_says(sandbox, session_id, "Fine, thanks for asking.", task_id="t-1")
    upstream = next(iter(heygen.sockets))
    await upstream.write_message(BIG[::-1], binary=True)
    browser_got = []
    while (message := await asyncio.wait_for(ws.read_message(), 10)) is not None:
        browser_got.append(message)
        if message == BIG[::-1]:
            break
    ws.close(4002, "tab closed")
    await eventually(lambda: heygen.ws_closes)
    transcript = await client.call(f"/v1/streaming.transcript?session_id={session_id}", method="GET")
    turns = [(t["role"], t["transcript"], t["sources"]) for t in transcript.data["transcript"]]
    return {"heygen_got": list(heygen.ws_received), "browser_got": browser_got, "closes": heygen.ws_closes,
            "turns": turns}


@pytest.mark.gen_test(timeout=60)
async def test_both_pumps_relay_the_same_traffic_the_same_way(make_sandbox):
    fast = await traffic(make_sandbox, "fast")
    plain = await traffic(make_sandbox, "plain")
    assert fast == plain
    # ... and both relayed what was sent: every message whole, in order, fragments joined.
    sent = [*BROWSER_SENDS, "fragmented"]
    assert fast["heygen_got"] == [(isinstance(m, bytes), m) for m in sent]
    assert [m for m in fast["browser_got"] if isinstance(m, bytes)] == [BIG[::-1]]
    assert fast["closes"] == [(4002, "tab closed")]
    assert [(role, text) for role, text, _ in fast["turns"]] == [("user", "Hello from the plugin"),
                                                               ("avatar", "Fine, thanks for asking.")]


@pytest.mark.gen_test(timeout=30)
async def test_a_tornado_without_what_the_fast_pump_needs_falls_back_to_the_plain_one(make_sandbox, monkeypatch,
                                                                                      caplog):
    """As if a tornado release had changed one of the private methods the fast pump calls (same behaviour, another
    signature): the gateway says so once and relays with its plain pump."""
    from tornado.websocket import WebSocketProtocol13
    abort = WebSocketProtocol13._abort
    monkeypatch.setattr(WebSocketProtocol13, "_abort", lambda self, now=True: abort(self))
    sandbox = await make_sandbox(RELAY_PUMP="fast")
    assert not sandbox.gateway.fast_relay
    assert "lacks WebSocketProtocol13._abort('self',) (signature changed): the relay uses its plain pump" in caplog.text
    session_id, _, ws = await connected(sandbox, GatewayClient(sandbox.gateway_url))
    await ws.write_message(text_frame("Through the plain pump"), binary=True)
    received = sandbox.heygen.sessions[session_id].ws_received
    await eventually(lambda: received)
    assert received == [(True, text_frame("Through the plain pump"))]
    ws.close()
