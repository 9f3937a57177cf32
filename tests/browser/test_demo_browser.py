"""The demo console (/demo) in a real browser: headless Chromium driven over the Chrome DevTools Protocol.

The page drives the gateway exactly as the plugin does; the sandbox (HeyGen + LiveAvatar emulators, Petya reference,
gateway) runs in-process on loopback. The CDP driver below is deliberately small: tornado's websocket_connect, one
command at a time, events collected as they arrive. Screenshots land in tests/artifacts/ (gitignored).
"""
import asyncio
import base64
import inspect
import json
import os
import pathlib
import re
import socket
import time
from contextlib import asynccontextmanager
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import websocket_connect

from sandbox.liveavatar import sandbox_reply
from sandbox.petya import DEFAULT_CONFIG
from sandbox.stack import DEMO_API_KEY
from tests.helpers.cdp import CHROMIUM, Tab, start_chromium, stop_process_group
from tests.helpers.client import GatewayClient, eventually

ARTIFACTS = pathlib.Path(__file__).parent.parent / "artifacts"  # tests/artifacts
VIEWPORT = (1440, 1000)
DEFAULT_INTRO = "Hello and welcome. How can I help you today?"
TALK_REPLY = "You said \"What can you do?\". I am the sandbox avatar."
WS_PARAMS = {"silence_response": "false", "opening_text": "", "stt_language": "en", "enable_tts": "true",
             "enable_stt": "false"}

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} not installed (apt-get install -y chromium)")


# --- the CDP driver ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    """A headless Chromium for this module; yields its DevTools HTTP base (http://127.0.0.1:<port>)."""
    process, base = start_chromium(tmp_path_factory.mktemp("chromium"))
    try:
        yield base
    finally:
        stop_process_group(process)


class Page(Tab):
    """The demo console's tab."""

    async def until(self, expression, timeout=10, banner_ok=False):
        """Wait until `expression` is truthy; fail at once, with its text, when the page shows an error banner."""
        import asyncio
        deadline = time.monotonic() + timeout
        while True:
            value = await self.js(expression)
            if value:
                return value
            if not banner_ok and not await self.js("document.getElementById('banner').hidden"):
                raise AssertionError(f"banner while waiting for {expression!r}: {await self.text('#banner')}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not true within {timeout}s: {expression!r}")
            await asyncio.sleep(0.05)

    async def text(self, selector):
        return await self.js(f"document.querySelector({json.dumps(selector)}).textContent.replace(/\\s+/g, ' ').trim()")

    async def enabled(self, selector):
        return await self.js(f"!document.querySelector({json.dumps(selector)}).disabled")

    async def fill(self, selector, value):
        await self.js(f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            e.value = {json.dumps(value)}; e.dispatchEvent(new Event('input', {{bubbles: true}}));
            e.dispatchEvent(new Event('change', {{bubbles: true}})); }})()""")

    async def click(self, selector, timeout=10):
        """Click once the element is enabled (a person cannot click a disabled button either)."""
        await self.until(f"!document.querySelector({json.dumps(selector)}).disabled", timeout)
        await self.js(f"document.querySelector({json.dumps(selector)}).click()")

    async def goto(self, url):
        await self.send("Page.navigate", url=url)
        await self.until("document.readyState === 'complete' && !!document.getElementById('btnNew')", banner_ok=True)

    async def screenshot(self, path):
        metrics = await self.send("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                               clip={"x": 0, "y": 0, "width": VIEWPORT[0], "height": size["height"], "scale": 1})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    def errors(self):
        """Uncaught exceptions and console.error calls the page produced."""
        return [params for method, params in self.events
                if method == "Runtime.exceptionThrown"
                or (method == "Runtime.consoleAPICalled" and params.get("type") == "error")]

    def requests(self, prefix):
        """(method, path, headers, body) of the requests the page sent to URLs under `prefix`, in order."""
        sent = []
        for method, params in self.events:
            if method == "Network.requestWillBeSent" and params["request"]["url"].startswith(prefix):
                request = params["request"]
                if request["method"] == "OPTIONS":
                    continue
                sent.append((request["method"], urlsplit(request["url"]).path, request["headers"],
                             request.get("postData")))
        return sent


@asynccontextmanager
async def open_page(devtools):
    """A fresh tab (its own target), closed afterwards."""
    http = AsyncHTTPClient()
    response = await http.fetch(f"{devtools}/json/new?about:blank", method="PUT", body=b"")
    target = json.loads(response.body)
    ws = await websocket_connect(target["webSocketDebuggerUrl"], max_message_size=64 * 1024 * 1024)
    page = Page(ws)
    try:
        for domain in ("Page.enable", "Runtime.enable", "Network.enable"):
            await page.send(domain)
        await page.send("Emulation.setDeviceMetricsOverride", width=VIEWPORT[0], height=VIEWPORT[1],
                        deviceScaleFactor=1, mobile=False)
        yield page
    finally:
        ws.close()
        await http.fetch(f"{devtools}/json/close/{target['id']}", raise_error=False)


# --- helpers -----------------------------------------------------------------------------------------------------

def start_sandbox(io_loop, make_sandbox, **settings):
    # The page is served by the gateway itself; "*" lets its (random-port) origin open the WebSocket relay.
    made = make_sandbox(CORS_ORIGINS="*", **settings)
    if inspect.isawaitable(made):  # make_sandbox is a coroutine function in newer conftests
        made = io_loop.run_sync(lambda: made)
    return made


@pytest.fixture
def demo_sandbox(io_loop, make_sandbox):
    return start_sandbox(io_loop, make_sandbox)


@pytest.fixture
def uncached_sandbox(io_loop, make_sandbox):
    """The gateway reads the avatar config from Petya on every call (no PETYA_CONFIG_TTL cache)."""
    return start_sandbox(io_loop, make_sandbox, PETYA_CONFIG_TTL="0")


def demo_url(sandbox, api_key=DEMO_API_KEY):
    return (f"{sandbox.gateway_url}/demo#key={quote(api_key)}&petya={quote(sandbox.served['petya'].url)}"
            f"&petyaToken={quote(sandbox.petya.service_token)}")


TURNS_JS = """Array.from(document.querySelectorAll('%s .turn')).map(t =>
    [t.dataset.role, t.querySelector('.text').textContent, t.classList.contains('live')])"""
TIMELINE_JS = """Array.from(document.querySelectorAll('#timeline .ev')).map(e => ({kind: e.dataset.kind,
    method: e.dataset.method || null, path: e.dataset.path || null, status: e.dataset.status || null,
    target: e.dataset.target || null, type: e.dataset.type || null, text: e.textContent}))"""


async def wait_turns(page, expected, timeout=5.0):
    """Wait until the page's live transcript (the gateway's record, read back) shows `expected`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (shown := await turns(page)) != expected:
        assert asyncio.get_running_loop().time() < deadline, shown
        await asyncio.sleep(0.05)


def plugin_calls(timeline):
    """The gateway calls the plugin makes, in order, and the statuses of the page's own transcript reads."""
    rest = [e for e in timeline if e["kind"] == "rest" and e["target"] == "gateway"]
    reads = [e["status"] for e in rest if e["path"].startswith("/v1/streaming.transcript?")]
    return [(e["method"], e["path"], e["status"]) for e in rest
            if not e["path"].startswith("/v1/streaming.transcript?")], reads


async def turns(page, where="#transcript"):
    return [(role, text) for role, text, live in await page.js(TURNS_JS % where) if not live]


async def wait_idle(page, phase, timeout=10):
    await page.until(f"document.body.dataset.phase === '{phase}' && document.body.dataset.busy === 'false'", timeout)


async def buttons(page):
    return {name: await page.enabled("#btn" + name) for name in ("New", "Start", "Repeat", "Talk", "Stop")}


async def say(page, button, text):
    await page.fill("#taskText", text)
    await page.click(button)
    await page.until("document.body.dataset.busy === 'false' && document.getElementById('taskText').value === ''")


def header(headers, name):
    """A request header (any case) and the exact name the page used."""
    for key, value in headers.items():
        if key.lower() == name.lower():
            return key, value
    return None, None


# --- tests -------------------------------------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_heygen_session_in_the_browser(demo_sandbox, chromium):
    """HeyGen v2: the console joins the session's room after streaming.start, plays the avatar's video, sees the
    avatar's words there (as LiveKit data) and reports them; the socket carries none of them."""
    sandbox = demo_sandbox
    async with open_page(chromium) as page:
        await page.goto(demo_url(sandbox))
        # Settings from the fragment; the persona from the Petya reference's admin route.
        assert await page.js("document.getElementById('gatewayUrl').value") == sandbox.gateway_url
        assert await page.js("document.getElementById('apiKey').value") == DEMO_API_KEY
        await page.until("document.getElementById('cfgAvatarId').value !== ''")
        assert await page.js("document.getElementById('cfgIntro').value") == DEFAULT_INTRO
        assert await buttons(page) == {"New": True, "Start": False, "Repeat": False, "Talk": False, "Stop": False}

        await page.click("#btnNew")
        await wait_idle(page, "created")
        assert await buttons(page) == {"New": False, "Start": True, "Repeat": False, "Talk": False, "Stop": True}
        conversation_id = await page.text("#conversationId")
        session_id = await page.text("#sessionId")
        assert conversation_id.startswith("demo-") and session_id in sandbox.heygen.sessions
        await page.until("!!document.querySelector('#timeline .ev[data-type=\"open\"]')")

        await page.click("#btnStart")
        await wait_idle(page, "started")
        assert not await page.enabled("#btnRepeat")  # nothing typed yet
        await assert_video_plays(page)
        await wait_turns(page, [("avatar", DEFAULT_INTRO)])
        await say(page, "#btnRepeat", "Hello")
        await wait_turns(page, [("avatar", DEFAULT_INTRO), ("avatar", "Hello")])
        await say(page, "#btnTalk", "What can you do?")
        await page.screenshot(ARTIFACTS / "demo-heygen-live.png")  # the avatar answering, in its room
        expected = [("avatar", DEFAULT_INTRO), ("avatar", "Hello"), ("user", "What can you do?"),
                    ("avatar", TALK_REPLY)]
        await page.until(f"JSON.stringify(({TURNS_JS % '#transcript'}).map(t => [t[0], t[1]])) === "
                         f"{json.dumps(json.dumps([list(t) for t in expected], separators=(',', ':')))}")

        await page.click("#btnStop")
        await wait_idle(page, "stopped")
        assert await buttons(page) == {"New": True, "Start": False, "Repeat": False, "Talk": False, "Stop": False}
        await page.until("document.getElementById('petyaTranscript').dataset.state === 'received' && "
                         "document.querySelector('#petyaTranscript .petya-status').textContent.includes('completed')",
                         timeout=15)
        assert await turns(page, "#petyaTranscript") == expected
        assert await page.js("!!document.querySelector('#petyaTranscript .match.ok')")
        assert await turns(page) == expected
        await page.screenshot(ARTIFACTS / "demo-heygen.png")

        # The timeline: every REST call with its status, and the socket's events.
        timeline = await page.js(TIMELINE_JS)
        gateway_calls, reads = plugin_calls(timeline)
        assert reads and all(status == "200" for status in reads)  # the page shows the gateway's own record
        reports = [call for call in gateway_calls if call[1] == "/v1/streaming.avatar_message"]
        assert [call for call in gateway_calls if call not in reports] == [
            ("POST", "/v1/streaming.create_token", "200"), ("POST", "/v1/streaming.new", "200"),
            ("POST", "/v1/streaming.start", "200")] + [("POST", "/v1/streaming.task", "200")] * 3 + [
            ("POST", "/v1/streaming.stop", "200")]
        assert reports == [("POST", "/v1/streaming.avatar_message", "200")] * 3  # what the avatar said in the room
        petya_calls = [(e["method"], e["path"], e["status"]) for e in timeline if e["target"] == "petya"]
        assert petya_calls[0] == ("GET", "/api/v1/admin/accounts/config", "200")
        assert petya_calls[-1] == ("GET", f"/api/v1/avatar/conversations/{conversation_id}", "200")
        assert all(e["text"].strip().endswith("ms") for e in timeline if e["kind"] == "rest")
        ws_types = [e["type"] for e in timeline if e["kind"] == "ws"]
        assert ws_types == ["connecting", "open", "close"], ws_types  # HeyGen v2 says nothing on the socket here
        room = [e for e in timeline if e["kind"] == "room"]
        room_types = [e["type"] for e in room]
        assert any("heygen's video track subscribed" in e["text"] for e in room), room_types
        for kind in ("avatar_start_talking", "avatar_talking_message", "avatar_end_message", "avatar_stop_talking"):
            assert kind in room_types, room_types
        assert room_types.index("avatar_start_talking") < room_types.index("avatar_end_message")

        # What the browser really sent: the plugin contract, header spellings included.
        await page.js("1")  # collect the events still queued on the DevTools socket
        sent = [r for r in page.requests(sandbox.gateway_url + "/v1/")
                if r[1] not in ("/v1/streaming.transcript", "/v1/streaming.avatar_message")]
        assert [(m, p) for m, p, _, _ in sent] == [
            (m, p) for m, p, body in gateway_calls if (m, p, body) not in reports], sent
        bodies = [json.loads(body) if body else None for _, _, _, body in sent]
        assert bodies[0] is None
        assert bodies[1] == {"quality": "medium", "version": "v2", "conversation_id": conversation_id}
        assert bodies[2] == {"session_id": session_id}
        assert bodies[3:6] == [{"session_id": session_id, "text": DEFAULT_INTRO, "task_type": "repeat"},
                               {"session_id": session_id, "text": "Hello", "task_type": "repeat"},
                               {"session_id": session_id, "text": "What can you do?", "task_type": "talk"}]
        assert bodies[6] == {"session_id": session_id}
        for _, path, headers, _ in sent:
            name, value = header(headers, "X-Api-Key")
            assert value == DEMO_API_KEY, (path, headers)
            assert name == ("X-api-key" if path.endswith("streaming.start") else "X-Api-Key"), (path, name)
            assert header(headers, "Content-Type")[1] == "application/json"
        assert header(sent[1][2], "Accept")[1] == "application/json"
        socket = [params["url"] for method, params in page.events if method == "Network.webSocketCreated"
                  and "/v1/ws/streaming.chat" in params["url"]]  # (the others: LiveKit's signal socket)
        assert len(socket) == 1 and socket[0].startswith(sandbox.gateway_url.replace("http", "ws") +
                                                         "/v1/ws/streaming.chat?session_id=" + session_id)
        query = parse_qs(urlsplit(socket[0]).query, keep_blank_values=True)
        assert {k: v[0] for k, v in query.items() if k in WS_PARAMS} == WS_PARAMS
        assert query["session_token"][0] not in sandbox.heygen.tokens  # the gateway's token, not HeyGen's
        assert page.errors() == []

    # What HeyGen was asked, and what Petya stored.
    tasks = [(t["text"], t["task_type"]) for t in sandbox.heygen.sessions[session_id].tasks]
    assert tasks == [(DEFAULT_INTRO, "repeat"), ("Hello", "repeat"), ("What can you do?", "talk")]
    assert sandbox.heygen.sessions[session_id].status == "closed"
    conversation = sandbox.petya.get_conversation(conversation_id)
    assert conversation["sessionId"] == session_id and conversation["status"] == "completed"
    assert [(t["role"], t["transcript"]) for t in conversation["transcript"]] == expected
    assert len(sandbox.petya.deliveries(conversation_id)) == 1


VIDEO_JS = """(() => { const v = document.querySelector('#video .avatar-video');
    return v ? [v.videoWidth, v.videoHeight, v.currentTime] : null; })()"""


async def assert_video_plays(page):
    """The avatar's video from its LiveKit room decodes frames and moves on."""
    await page.until(f"(({VIDEO_JS}) || [0])[0] > 0", timeout=10)
    first = await page.js(VIDEO_JS)
    await asyncio.sleep(0.5)
    later = await page.js(VIDEO_JS)
    assert first[:2] == [320, 240] and later[2] > first[2], (first, later)


@pytest.mark.gen_test(timeout=60)
async def test_liveavatar_session_in_the_browser(demo_sandbox, chromium):
    """The console joins the session's room, sends Repeat and Talk as agent-control commands (liveavatar-proxy spec
    §3), shows the avatar's video, and reports what the room says was said; Petya gets the room's transcript once."""
    sandbox = demo_sandbox
    sandbox.liveavatar.seconds_per_word = 0.05
    async with open_page(chromium) as page:
        try:
            await page.goto(demo_url(sandbox))
            await page.click("#providerLiveavatar")
            await page.click("#btnNew")
            await wait_idle(page, "created")
            conversation_id = await page.text("#conversationId")
            session_id = await page.text("#sessionId")
            await page.click("#btnStart")
            await wait_idle(page, "started")
            await assert_video_plays(page)
            await wait_turns(page, [("avatar", DEFAULT_INTRO)])
            await say(page, "#btnRepeat", "Hello")
            await wait_turns(page, [("avatar", DEFAULT_INTRO), ("avatar", "Hello")])
            await say(page, "#btnTalk", "What can you do?")
            await page.screenshot(ARTIFACTS / "demo-liveavatar-live.png")  # the avatar answering, in its room
            reply = sandbox_reply("What can you do?")
            seen = [("avatar", DEFAULT_INTRO), ("avatar", "Hello"), ("user", "What can you do?"), ("avatar", reply)]
            await wait_turns(page, seen)
            await page.click("#btnStop")
            await wait_idle(page, "stopped")
            await page.until("document.getElementById('petyaTranscript').dataset.state === 'received' && document"
                             ".querySelector('#petyaTranscript .petya-status').textContent.includes('completed')",
                             timeout=15)
        finally:
            await page.screenshot(ARTIFACTS / "demo-liveavatar.png")

        timeline = await page.js(TIMELINE_JS)
        gateway_calls, reads = plugin_calls(timeline)
        assert reads and all(status == "200" for status in reads)
        assert gateway_calls == [("POST", "/v1/sessions/token", "200"), ("POST", "/v1/sessions/start", "201"),
                                 ("POST", "/v1/streaming.avatar_message", "200"),
                                 ("POST", "/v1/streaming.avatar_message", "200"),
                                 ("POST", "/v1/streaming.user_message", "200"),
                                 ("POST", "/v1/streaming.avatar_message", "200"), ("POST", "/v1/sessions/stop", "200")]
        room = [e["text"] for e in timeline if e["kind"] == "room"]
        assert any("heygen's video track subscribed" in text for text in room), room
        published = [re.search(r"avatar\.speak_\w+", e["text"]).group() for e in timeline
                     if e["kind"] == "room" and e["type"] == "publish agent-control"]
        assert published == ["avatar.speak_text"] * 2 + ["avatar.speak_response"]
        for kind in ("avatar.speak_started", "avatar.transcription.chunk", "avatar.transcription", "user.transcription",
                     "avatar.speak_ended"):
            assert any(e["type"] == kind for e in timeline if e["kind"] == "room"), kind
        await page.js("1")
        sent = [r for r in page.requests(sandbox.gateway_url + "/v1/") if r[1] != "/v1/streaming.transcript"]
        assert json.loads(sent[0][3]) == {"conversation_id": conversation_id}
        assert header(sent[0][2], "X-Api-Key")[1] == DEMO_API_KEY
        assert header(sent[1][2], "Authorization")[1].startswith("Bearer ") and sent[1][3] is None
        assert json.loads(sent[-1][3]) == {"session_id": session_id}
        assert page.errors() == []
    # What the avatar was told in the room, and what Petya stored: the room's transcript, once, in order.
    commands = [(c["event_type"], c["text"]) for c in sandbox.liveavatar.sessions[session_id].commands]
    assert commands == [("avatar.speak_text", DEFAULT_INTRO), ("avatar.speak_text", "Hello"),
                        ("avatar.speak_response", "What can you do?")]
    conversation = await eventually(lambda: sandbox.petya.get_conversation(conversation_id))
    assert [(t["role"], t["transcript"]) for t in conversation["transcript"]] == seen
    assert conversation["status"] == "completed" and len(sandbox.petya.deliveries(conversation_id)) == 1


async def bad_key(sandbox, page):
    await page.fill("#apiKey", "not-a-customer-key")


async def session_limit(sandbox, page):
    sandbox.heygen.max_sessions = 0


async def heygen_down(sandbox, page):
    await sandbox.served["heygen"].stop()


def closed_port():
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def gateway_unreachable(sandbox, page):
    await page.fill("#gatewayUrl", f"http://127.0.0.1:{closed_port()}")


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("breakage, title, phrases", [
    (bad_key, "API key rejected (401)", ["Check the customer API key"]),
    (session_limit, "Session limit reached (429)", ["sessions are in use", "stop a session"]),
    (heygen_down, "Upstream unavailable (502)", ["down or too slow"]),
    (gateway_unreachable, "Network error", ["could not reach the gateway at http://127.0.0.1:", "CORS"]),
])
async def test_failures_show_a_visible_banner(demo_sandbox, chromium, breakage, title, phrases):
    sandbox = demo_sandbox
    async with open_page(chromium) as page:
        await page.goto(demo_url(sandbox))
        await page.until("document.getElementById('configStatus').textContent.startsWith('Loaded')")
        await breakage(sandbox, page)
        await page.click("#btnNew")
        await page.until("!document.getElementById('banner').hidden", banner_ok=True)
        banner = await page.text("#banner")
        assert title in banner, banner
        for phrase in phrases:
            assert phrase in banner, banner
        if breakage is bad_key:  # the gateway's own JSON message, word for word
            reply = await GatewayClient(sandbox.gateway_url, "not-a-customer-key").call("/v1/streaming.create_token")
            assert reply.status == 401 and reply.json["message"] in banner, (reply.json, banner)
        # Visible: laid out, on screen, not transparent.
        box = await page.js("(() => { const r = document.getElementById('banner').getBoundingClientRect(); "
                            "return [r.width, r.height, r.top, "
                            "getComputedStyle(document.getElementById('banner')).visibility]; })()")
        assert box[0] > 300 and box[1] > 30 and 0 <= box[2] < VIEWPORT[1] and box[3] == "visible", box
        # Nothing half-made: the page is back to where New can be tried again.
        await wait_idle(page, "idle")
        assert await buttons(page) == {"New": True, "Start": False, "Repeat": False, "Talk": False, "Stop": False}
        timeline = await page.js(TIMELINE_JS)
        last = [e for e in timeline if e["kind"] == "rest"][-1]
        assert last["status"] == ("ERR" if breakage is gateway_unreachable else title.split("(")[-1].rstrip(")"))
        if breakage is bad_key:
            await page.screenshot(ARTIFACTS / "demo-error.png")
        await page.click("#bannerClose")
        assert await page.js("document.getElementById('banner').hidden")
        assert page.errors() == []


@pytest.mark.gen_test(timeout=30)
async def test_persona_edited_in_the_page_reaches_the_next_session(uncached_sandbox, chromium):
    sandbox = uncached_sandbox
    persona = {"avatarId": "Anna_public_3_20240108", "intro": "Hi, I am Anna. Ask me anything.",
               "voiceId": "voice-42", "knowledgeBaseId": None, "language": "en"}
    async with open_page(chromium) as page:
        await page.goto(demo_url(sandbox))
        await page.until("document.getElementById('configStatus').textContent.startsWith('Loaded')")
        await page.fill("#cfgAvatarId", persona["avatarId"])
        await page.fill("#cfgIntro", persona["intro"])
        await page.fill("#cfgVoiceId", persona["voiceId"])
        await page.click("#btnSaveConfig")
        await page.until("document.getElementById('configStatus').textContent.startsWith('Saved')")
        stored = sandbox.petya.config_for_key(DEMO_API_KEY)
        assert {k: stored[k] for k in DEFAULT_CONFIG} == DEFAULT_CONFIG | persona

        await page.click("#btnNew")
        await wait_idle(page, "created")
        assert await page.text("#introText") == persona["intro"]
        await page.click("#btnStart")
        await wait_idle(page, "started")
        await page.until("document.querySelectorAll('#transcript .turn:not(.live)').length === 1")
        assert await turns(page) == [("avatar", persona["intro"])]
        await page.click("#btnStop")
        await wait_idle(page, "stopped")

        await page.js("1")
        saved = [r for r in page.requests(sandbox.served["petya"].url) if r[0] == "PUT"]
        assert len(saved) == 1 and saved[0][1] == "/api/v1/admin/accounts/config"
        assert header(saved[0][2], "X-Api-Key")[1] == DEMO_API_KEY
        assert header(saved[0][2], "Authorization")[1] == "Bearer " + sandbox.petya.service_token
        assert json.loads(saved[0][3]) == persona
        assert page.errors() == []
    upstream = sandbox.heygen.recorder.calls("/v1/streaming.new")[-1].json()
    assert upstream["avatar_id"] == persona["avatarId"] and upstream["voice"] == {"voice_id": "voice-42"}


PROVIDER_SHOWN_JS = """[(document.querySelector('#cfgProvider input:checked') || {}).value,
    document.getElementById('cfgProviderStatus').textContent]"""


@pytest.mark.gen_test(timeout=30)
async def test_provider_switch_stores_it_in_petya(demo_sandbox, chromium):
    """The switch PUTs `provider` alone through the Petya reference's admin route; the page shows what Petya stored,
    and a page opened later shows it too."""
    sandbox = demo_sandbox
    admin = "/api/v1/admin/accounts/config"
    async with open_page(chromium) as page:
        await page.goto(demo_url(sandbox))
        await page.until("document.getElementById('cfgProvider').dataset.stored === 'default'")
        checked, status = await page.js(PROVIDER_SHOWN_JS)
        assert (checked, "HEYGEN_CONTRACT_PROVIDER decides" in status) == ("", True)
        assert "provider" not in sandbox.petya.config_for_key(DEMO_API_KEY)

        await page.click("#cfgProviderLiveavatar")
        await page.until("document.getElementById('cfgProvider').dataset.stored === 'liveavatar'")
        assert sandbox.petya.config_for_key(DEMO_API_KEY)["provider"] == "liveavatar"
        checked, status = await page.js(PROVIDER_SHOWN_JS)
        assert checked == "liveavatar" and "LiveAvatar serves new sessions" in status

        await page.click("#cfgProviderHeygen")
        await page.until("document.getElementById('cfgProvider').dataset.stored === 'heygen'")
        assert sandbox.petya.config_for_key(DEMO_API_KEY)["provider"] == "heygen"

        await page.js("1")
        puts = [r for r in page.requests(sandbox.served["petya"].url) if r[0] == "PUT"]
        assert [(path, json.loads(body)) for _, path, _, body in puts] == [
            (admin, {"provider": "liveavatar"}), (admin, {"provider": "heygen"})]
        assert header(puts[0][2], "X-Api-Key")[1] == DEMO_API_KEY
        assert header(puts[0][2], "Authorization")[1] == "Bearer " + sandbox.petya.service_token
        assert page.errors() == []

    sandbox.petya.update_account_config(DEMO_API_KEY, provider="liveavatar")  # changed elsewhere meanwhile
    async with open_page(chromium) as page:
        await page.goto(demo_url(sandbox))
        await page.until("document.getElementById('cfgProvider').dataset.stored === 'liveavatar'")
        assert (await page.js(PROVIDER_SHOWN_JS))[0] == "liveavatar"
        await page.click("#cfgProviderDefault")
        await page.until("document.getElementById('cfgProvider').dataset.stored === 'default'")
        assert sandbox.petya.config_for_key(DEMO_API_KEY)["provider"] is None
        await page.screenshot(ARTIFACTS / "demo-provider-switch.png")
        assert page.errors() == []
