"""The official `@heygen/liveavatar-web-sdk` 0.0.18, unchanged (tests/sdk, pinned), in headless Chromium against the
sandbox through the gateway, all the way into the LiveAvatar emulator's room (FULL mode on sandbox/livekit/).

Set-up as tests/browser/test_sdk_browser.py's, from tests/helpers/browser.py (the same pinned bundle, nginx with TLS
for https://avatar.sandbox.test and the customer's page at https://shop.sandbox.test), plus the WebRTC flags
tests/browser/test_livekit_browser.py uses. The page: `start()` (REST /v1/sessions/start through the gateway, then
`room.connect` to the sandbox's room server) → CONNECTED and STREAM_READY → `repeat` and `message` (agent-control
data) → the AVATAR_TRANSCRIPTION events → the attached video element decodes frames → `stop()` → the Petya reference
received the room's transcript once, in order. Then a second session that the emulator ends for idleness: the SDK
hears `session.stopped` in the room and disconnects (SERVER_INITIATED). Writes tests/artifacts/liveavatar-sdk-room.png
(the page while the avatar speaks) and .json (the SDK's events, timings). Also, as in
tests/browser/test_livekit_browser.py: Chromium's host-resolver rules must leave 127.0.0.1 alone (EXCLUDE), or
`room.connect` to ws://127.0.0.1 fails.
"""
import asyncio
import base64
import json
import pathlib
import time
import uuid

import pytest

from sandbox.liveavatar import sandbox_reply
from sandbox.stack import Sandbox
from tests.helpers.browser import (
    GATEWAY,
    GATEWAY_HOST,
    PAGE_ORIGIN,
    SHOP_HOST,
    WEBRTC_FLAGS,
    Nginx,
    api_call,
    bundle,
    close_tab,
    find_tools,
    install_sdks,
    load_page,
    make_certificate,
    open_sdk_tab,
)
from tests.helpers.cdp import start_chromium, stop_process_group
from tests.helpers.client import FAST

ARTIFACTS = pathlib.Path(__file__).parent.parent / "artifacts"  # tests/artifacts
REPEAT = "Hello from the LiveAvatar web SDK."
MESSAGE = "What can you do?"
SECONDS_PER_WORD = 0.15

SETUP_JS = """
window.session = new LiveAvatarSDK.LiveAvatarSession(%(token)s, {apiUrl: %(gateway)s, voiceChat: false});
window.sessionEvents = [];
window.eventTypes = new Set([...Object.values(LiveAvatarSDK.SessionEvent),
                             ...Object.values(LiveAvatarSDK.AgentEventsEnum)]);
for (const type of eventTypes) {
  session.on(type, (...args) => sessionEvents.push(
    {type, at: performance.now(), args: JSON.parse(JSON.stringify(args))}));
}
window.video = document.createElement("video");
video.autoplay = true; video.muted = true; video.playsInline = true; video.width = 320; video.height = 240;
document.body.appendChild(video);
true
"""


def events(tab_events, type_):
    return [e for e in tab_events if e["type"] == type_]


async def until(tab, expression, timeout=15, what=""):
    deadline = time.monotonic() + timeout
    while not (value := await tab.js(expression)):
        if time.monotonic() > deadline:
            seen = await tab.js("JSON.stringify(window.sessionEvents ?? null)")
            raise AssertionError(f"not seen within {timeout}s: {what or expression}; the SDK emitted {seen}")
        await asyncio.sleep(0.05)
    return value


def saw_text(type_, text):
    return (f"sessionEvents.some((e) => e.type === {json.dumps(type_)} && e.args[0] && "
            f"e.args[0].text === {json.dumps(text)})")


async def scenario(tools, mongodb_uri, workdir, site, cert, key):
    sandbox = Sandbox(mongodb_uri, database="t_lasdk_" + uuid.uuid4().hex[:10], **{**FAST,
                                                                                  "CORS_ORIGINS": PAGE_ORIGIN})
    sandbox.liveavatar.seconds_per_word = SECONDS_PER_WORD
    await sandbox.start()
    nginx = chromium = devtools = tab = None
    report = {"timings": {}}
    try:
        (workdir / "nginx").mkdir()
        nginx = Nginx(tools["nginx"], workdir / "nginx", cert, key, site, sandbox.gateway.port).start()
        (workdir / "chromium").mkdir()
        rules = f"MAP {GATEWAY_HOST} 127.0.0.1, MAP {SHOP_HOST} 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"
        chromium, devtools = start_chromium(workdir / "chromium", f"--host-resolver-rules={rules}",
                                            "--ignore-certificate-errors", *WEBRTC_FLAGS)
        tab = await open_sdk_tab(devtools, "liveavatar")
        await load_page(tab)
        conversation_id = "lasdk-" + uuid.uuid4().hex[:12]
        minted = await api_call(tab, "/v1/sessions/token", {"conversation_id": conversation_id})
        assert minted["status"] == 200, minted
        session_id = minted["body"]["data"]["session_id"]
        await tab.js(SETUP_JS % {"token": json.dumps(minted["body"]["data"]["session_token"]),
                                 "gateway": json.dumps(GATEWAY)})

        began = time.monotonic()
        started = await tab.js("outcome(() => session.start())", timeout=30)
        assert started["ok"], started
        report["timings"]["start() resolved"] = round(time.monotonic() - began, 3)
        assert await tab.js("session.state") == "CONNECTED"
        await until(tab, "sessionEvents.some((e) => e.type === 'session.stream_ready')", what="STREAM_READY")
        assert await tab.js("session.attach(video), true")
        await until(tab, "video.videoWidth > 0 && video.currentTime > 0", what="a decoded frame")
        report["timings"]["start() to first decoded frame"] = round(time.monotonic() - began, 3)
        room = sandbox.rooms.rooms[session_id]
        # the avatar, LiveAvatar's agent, the page, and the gateway's room agent listening for the words
        assert sorted(room.participants) == sorted(["heygen", f"liveavatar-agent-{session_id}", "client", "agent"])

        repeat_id = await tab.js(f"session.repeat({json.dumps(REPEAT)})")
        await until(tab, saw_text("avatar.transcription.chunk", "LiveAvatar"), what="a chunk of the repeat")
        shot = await tab.send("Page.captureScreenshot", format="png")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "liveavatar-sdk-room.png").write_bytes(base64.b64decode(shot["data"]))
        await until(tab, saw_text("avatar.transcription", REPEAT), what="the repeat's AVATAR_TRANSCRIPTION")
        message_id = await tab.js(f"session.message({json.dumps(MESSAGE)})")
        reply = sandbox_reply(MESSAGE)
        await until(tab, saw_text("avatar.transcription", reply), timeout=20,
                    what="the reply's AVATAR_TRANSCRIPTION")

        first = await tab.js("({width: video.videoWidth, height: video.videoHeight, time: video.currentTime, "
                             "frames: video.getVideoPlaybackQuality().totalVideoFrames})")
        await asyncio.sleep(0.6)
        second = await tab.js("({time: video.currentTime, frames: video.getVideoPlaybackQuality().totalVideoFrames})")

        stopped = await tab.js("outcome(() => session.stop())", timeout=30)
        await until(tab, "session.state === 'DISCONNECTED'", what="DISCONNECTED after stop()")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not sandbox.petya.deliveries(conversation_id):
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # a duplicate hand-off would show up meanwhile
        seen = await tab.js("sessionEvents")

        # A second session the server ends (idle): the SDK hears session.stopped in the room and cleans up itself.
        idle_conversation = "lasdk-idle-" + uuid.uuid4().hex[:8]
        minted = await api_call(tab, "/v1/sessions/token", {"conversation_id": idle_conversation})
        await tab.js(SETUP_JS % {"token": json.dumps(minted["body"]["data"]["session_token"]),
                                 "gateway": json.dumps(GATEWAY)})
        assert (await tab.js("outcome(() => session.start())", timeout=30))["ok"]
        sandbox.liveavatar.idle_timeout = 1.0
        await until(tab, "session.state === 'DISCONNECTED'", what="DISCONNECTED after the server's session.stopped")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not sandbox.petya.deliveries(idle_conversation):
            await asyncio.sleep(0.05)
        report["idle"] = {"events": await tab.js("sessionEvents"),
                          "end_reason": sandbox.liveavatar.sessions[minted["body"]["data"]["session_id"]].end_reason,
                          "deliveries": len(sandbox.petya.deliveries(idle_conversation))}
        report.update(session_id=session_id, repeat_id=repeat_id, message_id=message_id, stopped=stopped,
                      video=[first, second], events=seen, reply=reply,
                      deliveries=sandbox.petya.deliveries(conversation_id),
                      conversation=sandbox.petya.get_conversation(conversation_id),
                      emulator_transcript=[(e["role"], e["transcript"])
                                           for e in sandbox.liveavatar.sessions[session_id].transcript],
                      commands=sandbox.liveavatar.sessions[session_id].commands,
                      room_closed=session_id not in sandbox.rooms.rooms)
        return report
    finally:
        if tab is not None:
            await close_tab(devtools, tab)
        if chromium is not None:
            stop_process_group(chromium)
        if nginx is not None:
            nginx.stop()
        await sandbox.stop()


@pytest.fixture(scope="module")
def run(tmp_path_factory, mongodb_server_uri):
    tools = find_tools()
    install_sdks(tools)
    workdir = tmp_path_factory.mktemp("liveavatar-sdk-room")
    site = workdir / "site"
    bundle(tools, site)
    cert, key = make_certificate(tools, workdir)
    began = time.monotonic()
    report = asyncio.run(scenario(tools, mongodb_server_uri, workdir, site, cert, key))
    report["timings"]["scenario"] = round(time.monotonic() - began, 2)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "liveavatar-sdk-room.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def test_sdk_commands_reach_the_room_and_its_events_come_back(run):
    seen = run["events"]
    states = [e["args"][0] for e in events(seen, "session.state_changed")]
    assert states[:2] == ["CONNECTING", "CONNECTED"] and states[-1] == "DISCONNECTED"
    kinds = [c["event_type"] for c in run["commands"]]
    assert kinds == ["avatar.speak_text", "avatar.speak_response"]
    assert [c["event_id"] for c in run["commands"]] == [run["repeat_id"], run["message_id"]]
    assert all(c["from"] == "client" for c in run["commands"])
    said = [(e["args"][0]["text"], e["args"][0]["source_event_id"]) for e in events(seen, "avatar.transcription")]
    assert said == [(REPEAT, run["repeat_id"]), (run["reply"], run["message_id"])]
    assert [e["args"][0]["text"] for e in events(seen, "user.transcription")] == [MESSAGE]
    chunks = [e["args"][0]["text"] for e in events(seen, "avatar.transcription.chunk")]
    assert chunks == REPEAT.split() + run["reply"].split()
    assert len(events(seen, "avatar.speak_started")) == len(events(seen, "avatar.speak_ended")) == 2


def test_the_video_element_decodes_moving_frames(run):
    first, second = run["video"]
    assert (first["width"], first["height"]) == (320, 240)
    assert second["time"] > first["time"] and second["frames"] > first["frames"]
    assert run["timings"]["start() to first decoded frame"] < 10


def test_stop_hands_the_rooms_transcript_to_petya_once_in_order(run):
    assert run["stopped"]["ok"], run["stopped"]
    expected = [("avatar", REPEAT), ("user", MESSAGE), ("avatar", run["reply"])]
    assert run["emulator_transcript"] == expected
    assert len(run["deliveries"]) == 1
    conversation = run["conversation"]
    assert conversation["sessionId"] == run["session_id"] and conversation["status"] == "completed"
    assert [(t["role"], t["transcript"]) for t in conversation["transcript"]] == expected
    assert run["room_closed"]


def test_the_sdk_hears_the_server_end_an_idle_session(run):
    idle = run["idle"]
    assert idle["end_reason"] == "IDLE_TIMEOUT"
    stopped = events(idle["events"], "session.stopped")
    assert [e["args"][0]["stop_reason"] for e in stopped] == ["IDLE_TIMEOUT"]
    assert [e["args"][0] for e in events(idle["events"], "session.disconnected")] == ["SERVER_INITIATED"]
    assert idle["deliveries"] == 1  # the SDK's own clean-up stop went through the gateway: one hand-off
