"""The browser's `livekit-client`, unchanged and pinned (tests/sdk: 2.15.7, as the LiveAvatar web SDK uses it, and
2.11.3, which HeyGen's SDK 2.1.0 pins for itself), in headless Chromium against the sandbox's room server
(sandbox/livekit/) with the synthetic avatar (sandbox/avatar.py) in the room as `heygen`.

The page (tests/sdk's bundle, served from loopback) joins, subscribes to the avatar's video and audio, decodes video
frames, exchanges data with the server participant both ways on topics, and sees a participant join and leave.
Each run writes tests/artifacts/livekit-browser-<version>.png (the page while the avatar speaks) and .json (what the
page saw, with the time from `room.connect` to the first decoded frame).
"""
import asyncio
import base64
import json
import os
import pathlib
import shutil
import time

import pytest
import tornado.web
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from sandbox.avatar import Avatar
from sandbox.livekit import RoomServer
from tests.helpers.browser import JOIN, WEBRTC_FLAGS, bundle, install_sdks, open_livekit_tab
from tests.helpers.cdp import CHROMIUM, start_chromium, stop_process_group

ARTIFACTS = pathlib.Path(__file__).parent.parent / "artifacts"  # tests/artifacts
VERSIONS = ("2.15.7", "2.11.3")
SPOKEN = "Hello from the sandbox avatar, watch my mouth move while I talk."


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The bundle (livekit-client from tests/sdk) in a directory to serve."""
    tools = {"node": shutil.which("node"), "npm": shutil.which("npm")}
    missing = [name for name, path in {**tools, "chromium": CHROMIUM if os.access(CHROMIUM, os.X_OK) else None}
               .items() if not path]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (`make browser` installs them from Debian)")
    install_sdks(tools)
    outdir = tmp_path_factory.mktemp("livekit-site")
    bundle(tools, outdir)
    return outdir


@pytest.fixture(scope="module")
def chromium(tmp_path_factory, site):
    process, devtools = start_chromium(tmp_path_factory.mktemp("chromium"), *WEBRTC_FLAGS)
    yield devtools
    stop_process_group(process)


@pytest.fixture
def page_url(io_loop, site):
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(tornado.web.Application([(r"/(.*)", tornado.web.StaticFileHandler, {"path": str(site)})]))
    server.add_sockets(sockets)
    yield f"http://127.0.0.1:{sockets[0].getsockname()[1]}/index.html"
    server.stop()


@pytest.fixture
def room_server(io_loop):
    server = RoomServer().listen()
    yield server
    io_loop.run_sync(server.close)


async def until(tab, expression, timeout=10, what=""):
    """Wait until a page expression (or a Python callable, when given one) is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = expression() if callable(expression) else await tab.js(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            seen = await tab.js("JSON.stringify(window.seen ?? null)")
            raise AssertionError(f"not seen within {timeout}s: {what or expression}; the page saw {seen}")
        await asyncio.sleep(0.05)


def saw(event_type, identity=None):
    """A page expression: whether the page saw a room event (of a participant)."""
    who = f" && e.identity === {json.dumps(identity)}" if identity else ""
    return f"seen.events.some((e) => e.type === {json.dumps(event_type)}{who})"


# Red pixels in the mouth's box and the mean brightness of the caption band, from the <video> drawn on a canvas.
SAMPLE = """(() => {
  const video = document.getElementById("video");
  const canvas = window.sampleCanvas ??= document.createElement("canvas");
  canvas.width = video.videoWidth; canvas.height = video.videoHeight;
  const g = canvas.getContext("2d", {willReadFrequently: true});
  g.drawImage(video, 0, 0);
  const w = canvas.width, h = canvas.height;
  const box = [w * 0.40, h * 0.42, w * 0.2, h * 0.2].map(Math.round);
  const mouth = g.getImageData(...box).data;
  let red = 0;
  for (let i = 0; i < mouth.length; i += 4) if (mouth[i] > 110 && mouth[i + 1] < 90 && mouth[i + 2] < 100) red++;
  const band = g.getImageData(0, Math.round(h * 0.78), w, Math.round(h * 0.2)).data;
  let light = 0;
  for (let i = 0; i < band.length; i += 4) light += band[i];
  return {red, caption: light / (band.length / 4), time: video.currentTime};
})()"""


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.gen_test(timeout=60)
async def test_livekit_client_in_chromium_joins_sees_the_avatar_and_exchanges_data(version, chromium, page_url,
                                                                                    room_server):
    room = room_server.room("browser-room")
    heard = []
    avatar = Avatar(name="HeyGen sandbox")
    heygen = await avatar.join(room, name="HeyGen", on_data=heard.append)
    tab = await open_livekit_tab(chromium, page_url)
    try:
        started = time.monotonic()
        joined = await tab.js(f"{JOIN}({json.dumps(version)}, {json.dumps(room_server.url)}, "
                              f"{json.dumps(room_server.token('browser-room', 'browser', name='Browser'))})")
        assert [(p["identity"], sorted(t["kind"] for t in p["tracks"])) for p in joined] == \
            [("heygen", ["audio", "video"])]
        assert "browser" in room.participants

        # both tracks subscribed, video decoding
        await until(tab, "seen.events.filter(e => e.type === 'trackSubscribed' && e.identity === 'heygen')"
                         ".length === 2", what="video and audio subscribed")
        await until(tab, "seen.firstFrameMs !== null && document.getElementById('video').videoWidth > 0",
                    what="a decoded video frame")
        first_frame_ms = await tab.js("seen.firstFrameMs")
        size = await tab.js("['videoWidth', 'videoHeight'].map((k) => document.getElementById('video')[k])")
        assert size == [320, 240]
        t1 = await tab.js("document.getElementById('video').currentTime")
        await until(tab, f"document.getElementById('video').currentTime > {t1} + 0.5", what="currentTime advancing")

        # the avatar speaks: the mouth moves, the caption appears, audio flows
        idle = await tab.js(SAMPLE)
        speech = asyncio.ensure_future(avatar.speak(SPOKEN))
        samples = []
        while not speech.done():
            samples.append(await tab.js(SAMPLE))
            if len(samples) == 8:
                await tab.send("Page.captureScreenshot")  # warm-up: the first capture is slow
                shot = await tab.send("Page.captureScreenshot", format="png")
            await asyncio.sleep(0.08)
        assert await speech is True
        reds = [s["red"] for s in samples]
        assert idle["red"] == 0 and max(reds) > 20 and len(set(reds)) > 2, (idle, reds)  # a mouth opening, moving
        assert max(s["caption"] for s in samples) > idle["caption"] + 3, (idle, samples)  # words drawn
        audio_bytes = await tab.js("""(async () => {
          const pub = [...room.remoteParticipants.get("heygen").audioTrackPublications.values()][0];
          let bytes = 0;
          (await pub.track.receiver.getStats()).forEach((s) => {
            if (s.type === "inbound-rtp") bytes += s.bytesReceived;
          });
          return pub.isSubscribed ? bytes : -1;
        })()""")
        assert audio_bytes > 0

        # data: server participant -> page, reliable and lossy, on topics
        heygen.publish_data(json.dumps({"type": "avatar_start_talking"}), topic="agent-response")
        heygen.publish_data(b"no topic")
        heygen.publish_data(b"lossy", topic="lossy-topic", reliable=False)
        data = await until(tab, "seen.data.length >= 3 && seen.data", what="three packets at the page")
        assert sorted(((d["from"], d["topic"], d["text"]) for d in data), key=str) == sorted([
            ("heygen", "agent-response", '{"type": "avatar_start_talking"}'), ("heygen", None, "no topic"),
            ("heygen", "lossy-topic", "lossy")], key=str)

        # data: page -> server participant, reliable and lossy, with a destination
        await tab.js("""(async () => {
          const bytes = (text) => new TextEncoder().encode(text);
          await room.localParticipant.publishData(bytes('{"type":"avatar.speak_text","text":"hi"}'),
                                                  {reliable: true, topic: "agent-control"});
          await room.localParticipant.publishData(bytes("lossy from page"),
            {reliable: false, topic: "lossy-topic", destinationIdentities: ["heygen"]});
        })()""")
        await until(tab, lambda: len(heard) == 2, what="both packets at the heygen participant")
        assert sorted((d.identity, d.topic, d.payload, d.reliable) for d in heard) == sorted([
            ("browser", "agent-control", b'{"type":"avatar.speak_text","text":"hi"}', True),
            ("browser", "lossy-topic", b"lossy from page", False)])

        # a participant joins and leaves: the page sees both
        agent = await room.add_server_participant("liveavatar-agent-1", name="Agent")
        await until(tab, saw("participantConnected", "liveavatar-agent-1"))
        await agent.leave()
        await until(tab, saw("participantDisconnected", "liveavatar-agent-1"))

        # the page leaves: the room hears it
        await tab.js("room.disconnect()")
        await room.wait_for(lambda r: "browser" not in r.participants, timeout=5)
        scenario_seconds = time.monotonic() - started
    finally:
        seen = await tab.js("JSON.stringify(window.seen ?? null)")
        tab.ws.close()
        await AsyncHTTPClient().fetch(f"{chromium}/json/close/{tab.target_id}", raise_error=False)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"livekit-browser-{version}.png").write_bytes(base64.b64decode(shot["data"]))
    (ARTIFACTS / f"livekit-browser-{version}.json").write_text(json.dumps(
        {"livekit_client": version, "connect_ms": json.loads(seen)["connectMs"], "first_frame_ms": first_frame_ms,
         "scenario_seconds": round(scenario_seconds, 2), "page_saw": json.loads(seen)}, indent=2))
    assert first_frame_ms < 10000


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.gen_test(timeout=60)
async def test_an_avatar_joining_after_the_page_reaches_it_by_renegotiation(version, chromium, page_url,
                                                                           room_server):
    """The page is alone in the room; the avatar joins later (the server offers the subscriber connection again)."""
    room = room_server.room("late-room")
    tab = await open_livekit_tab(chromium, page_url)
    try:
        joined = await tab.js(f"{JOIN}({json.dumps(version)}, {json.dumps(room_server.url)}, "
                              f"{json.dumps(room_server.token('late-room', 'browser'))})")
        assert joined == []
        await Avatar().join(room)
        await until(tab, saw("participantConnected", "heygen"))
        await until(tab, "seen.events.filter(e => e.type === 'trackSubscribed' && e.identity === 'heygen')"
                         ".length === 2", what="video and audio subscribed")
        await until(tab, "seen.firstFrameMs !== null && document.getElementById('video').videoWidth === 320",
                    what="a decoded video frame")
        t1 = await tab.js("document.getElementById('video').currentTime")
        await until(tab, f"document.getElementById('video').currentTime > {t1} + 0.3", what="currentTime advancing")
    finally:
        tab.ws.close()
        await AsyncHTTPClient().fetch(f"{chromium}/json/close/{tab.target_id}", raise_error=False)


@pytest.mark.gen_test(timeout=60)
async def test_a_dropped_signal_socket_rejoins_as_a_new_participant(chromium, page_url, room_server):
    """No resume here: the join answer disables it, so livekit-client reconnects by joining anew, and the avatar's
    video and data reach it again."""
    room = room_server.room("drop-room")
    avatar = Avatar()
    heygen = await avatar.join(room)
    tab = await open_livekit_tab(chromium, page_url)
    try:
        await tab.js(f"{JOIN}('2.15.7', {json.dumps(room_server.url)}, "
                     f"{json.dumps(room_server.token('drop-room', 'browser'))})")
        await tab.js("void room.on('reconnected', () => seen.events.push({type: 'reconnected'}))")
        await until(tab, "seen.firstFrameMs !== null", what="a first video frame")
        old_sid = room.participants["browser"].sid
        room.participants["browser"].handler.close()  # the signal socket drops
        await until(tab, saw("reconnected"), timeout=20)
        await room.wait_for(lambda r: "browser" in r.participants and r.participants["browser"].sid != old_sid)
        heygen.publish_data(b"after the drop", topic="agent-response")
        await until(tab, "seen.data.some(d => d.text === 'after the drop' && d.from === 'heygen')")
        t1 = await tab.js("document.getElementById('video').currentTime")
        await until(tab, f"document.getElementById('video').currentTime > {t1} + 0.3", what="video playing again")
    finally:
        tab.ws.close()
        await AsyncHTTPClient().fetch(f"{chromium}/json/close/{tab.target_id}", raise_error=False)
