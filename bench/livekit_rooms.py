"""What a live sandbox room costs: CPU and RSS of the room server (sandbox/livekit/) with one synthetic avatar
(sandbox/avatar.py) per room, each watched by one headless-Chromium page running livekit-client 2.15.7, and the time
from `room.connect` to the page's first decoded video frame.

    .venv/bin/python bench/livekit_rooms.py [ROOMS ...]     # default: 1 4
    BENCH_QUIET_AVATARS=1 .venv/bin/python bench/livekit_rooms.py   # avatars that never speak

The room server runs as a child process (its figures are its own: /proc/<pid>/stat and status); every avatar talks
without pause (a sentence, then the next), the costliest state: its picture is redrawn as the mouth and caption
change. Per room count: RSS and CPU with the rooms made but nobody watching, then with one page per room, over
MEASURE seconds. Needs Chromium, node and npm (`make browser`); uses tests/sdk's bundle.
"""
import asyncio
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repository: sandbox, tests.helpers

MEASURE = 15  # seconds
SENTENCE = "The sandbox avatar keeps talking so that every frame it sends is a new picture to draw and encode."


async def serve(rooms):
    """The child: a room server with `rooms` talking avatars; prints the URL and a token per room."""
    from sandbox.avatar import Avatar
    from sandbox.livekit import RoomServer

    server = RoomServer(max_rooms=max(rooms, 1)).listen()
    tokens, talking = [], []  # talking: the avatars' speech tasks, held while they run
    for i in range(rooms):
        avatar = Avatar()
        await avatar.join(server.room(f"bench-{i}"))
        if not os.environ.get("BENCH_QUIET_AVATARS"):
            talking.append(asyncio.ensure_future(talk(avatar)))
        tokens.append(server.token(f"bench-{i}", f"viewer-{i}"))
    print(json.dumps({"url": server.url, "tokens": tokens}), flush=True)
    await asyncio.Event().wait()


async def talk(avatar):
    while True:
        await avatar.speak(SENTENCE)


def cpu_seconds(pid, thread=None):
    """CPU time of a process (or of one of its threads: the IOLoop's is the process id)."""
    path = f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat"
    fields = pathlib.Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024


async def sample(pid, seconds):
    """(CPU % of one core, of which on the IOLoop's thread, RSS MiB) over `seconds`."""
    start_cpu, start_loop, start = cpu_seconds(pid), cpu_seconds(pid, pid), time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - start
    return (100 * (cpu_seconds(pid) - start_cpu) / elapsed, 100 * (cpu_seconds(pid, pid) - start_loop) / elapsed,
            rss_mib(pid))


async def measure(rooms, devtools, page_url):
    from tornado.httpclient import AsyncHTTPClient

    from tests.helpers.browser import JOIN, open_livekit_tab

    child = subprocess.Popen([sys.executable, __file__, "--serve", str(rooms)], stdout=subprocess.PIPE, text=True)
    try:
        started = json.loads(await asyncio.get_running_loop().run_in_executor(None, child.stdout.readline))
        await asyncio.sleep(2)
        unwatched = await sample(child.pid, 5)
        tabs, first_frames = [], []
        for token in started["tokens"]:  # one at a time: a background tab does not present frames
            tab = await open_livekit_tab(devtools, page_url)
            await tab.js(f"{JOIN}('2.15.7', {json.dumps(started['url'])}, {json.dumps(token)})")
            tabs.append(tab)
            deadline = time.monotonic() + 20
            while (ms := await tab.js("seen.firstFrameMs")) is None:
                if time.monotonic() > deadline:
                    raise AssertionError("no video frame within 20 s: " + await tab.js("JSON.stringify(seen)"))
                await asyncio.sleep(0.05)
            first_frames.append(ms)
        await asyncio.sleep(2)
        watched = await sample(child.pid, MEASURE)
        decoding = [await tab.js("""(async () => {
          const pub = [...room.remoteParticipants.get("heygen").videoTrackPublications.values()][0];
          let frames = 0;
          (await pub.track.receiver.getStats()).forEach((s) => {
            if (s.type === "inbound-rtp") frames += s.framesDecoded;
          });
          return frames;
        })()""") for tab in tabs]
        for tab in tabs:
            await tab.js("room.disconnect()")
            tab.ws.close()
            await AsyncHTTPClient().fetch(f"{devtools}/json/close/{tab.target_id}", raise_error=False)
        return {"rooms": rooms, "unwatched_cpu_percent": round(unwatched[0], 1),
                "unwatched_rss_mib": round(unwatched[2], 1), "watched_cpu_percent": round(watched[0], 1),
                "watched_ioloop_cpu_percent": round(watched[1], 1), "watched_rss_mib": round(watched[2], 1),
                "first_frame_ms": [round(ms) for ms in first_frames], "frames_decoded_per_page": decoding}
    finally:
        child.terminate()
        child.wait(10)


async def main(counts):
    import shutil

    import tornado.web
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    from tests.helpers.browser import WEBRTC_FLAGS, bundle, install_sdks
    from tests.helpers.cdp import start_chromium, stop_process_group
    tools = {"node": shutil.which("node"), "npm": shutil.which("npm")}
    with tempfile.TemporaryDirectory() as tmp:
        site = pathlib.Path(tmp) / "site"
        install_sdks(tools)
        bundle(tools, site)
        sockets = bind_sockets(0, "127.0.0.1")
        HTTPServer(tornado.web.Application([(r"/(.*)", tornado.web.StaticFileHandler, {"path": str(site)})])) \
            .add_sockets(sockets)
        page_url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}/index.html"
        (pathlib.Path(tmp) / "chromium").mkdir()
        process, devtools = start_chromium(pathlib.Path(tmp) / "chromium", *WEBRTC_FLAGS)
        try:
            baseline = subprocess.Popen([sys.executable, __file__, "--serve", "0"], stdout=subprocess.PIPE,
                                        text=True)
            baseline.stdout.readline()
            await asyncio.sleep(2)
            idle = await sample(baseline.pid, 5)
            baseline.terminate()
            baseline.wait(10)
            results = [{"rooms": 0, "cpu_percent": round(idle[0], 1), "rss_mib": round(idle[2], 1)}]
            for rooms in counts:
                results.append(await measure(rooms, devtools, page_url))
        finally:
            stop_process_group(process)
    print(json.dumps({"cpus": os.cpu_count(), "measure_seconds": MEASURE, "results": results}, indent=2))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        asyncio.run(serve(int(sys.argv[2])))
    else:
        asyncio.run(main([int(n) for n in sys.argv[1:]] or [1, 4]))
