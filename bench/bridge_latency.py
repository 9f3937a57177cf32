"""What a bridged task adds to a direct LiveAvatar command (issue 16): the time from asking for a speech until
LiveAvatar's avatar starts it (`avatar.speak_started` heard in the room), two ways, alternated, in one run:

    direct    a LiveKit client in the session's room publishes `avatar.speak_text` on `agent-control` itself (what
              LiveAvatar's web SDK does)
    bridged   `POST /v1/streaming.task` (HeyGen's contract, a repeat) to the gateway, which publishes the command in
              the room through its room agent (services/rooms.py), possibly forwarded to another process

    .venv/bin/python bench/bridge_latency.py [ROUNDS]      # default 60 of each

Both are timed by the same client in the room, to the same event. The sandbox (emulators, room server, gateway) runs
in this one process on one event loop, as `make run` does: a rough figure for the gateway's own share (REST parsing,
authentication, the task's turn, the publish), not a load test. The LiveAvatar emulator's avatar speaks one word per
10 ms, and each round waits for the speech to end.
"""
import asyncio
import json
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clients.livekit import DataParticipant  # noqa: E402
from domain.bridge import COMMAND_TOPIC, RESPONSE_TOPIC, command  # noqa: E402
from sandbox.mongo import MongoServer  # noqa: E402
from sandbox.stack import DEMO_API_KEY, Sandbox  # noqa: E402
from tests.helpers.client import GatewayClient  # noqa: E402

TEXT = "Three short words"


class Listener:
    """A client in the room, noting when each command's speech started and ended."""

    def __init__(self):
        self.started, self.ended = {}, {}
        self.participant = None

    def heard(self, data):
        if data.topic != RESPONSE_TOPIC:
            return
        event = json.loads(data.payload)
        source = event.get("source_event_id")
        if event.get("event_type") == "avatar.speak_started":
            self.started[source] = time.perf_counter()
        elif event.get("event_type") == "avatar.speak_ended":
            self.ended[source] = time.perf_counter()


async def wait_for(mapping, key, timeout=10):
    deadline = time.perf_counter() + timeout
    while key not in mapping:
        if time.perf_counter() > deadline:
            raise TimeoutError(key)
        await asyncio.sleep(0.001)
    return mapping[key]


async def main(rounds):
    mongo = MongoServer(tempfile.mkdtemp(prefix="bench-bridge-")).start()
    sandbox = Sandbox(mongo.uri, database="bench_bridge", CORS_ORIGINS="*", LOG_LEVEL="WARNING")
    try:
        await sandbox.start()
        sandbox.liveavatar.seconds_per_word = 0.01
        sandbox.petya.update_account_config(DEMO_API_KEY, provider="liveavatar")
        client = GatewayClient(sandbox.gateway_url)
        token = (await client.call("/v1/streaming.create_token")).data["token"]
        auth = {"Authorization": f"Bearer {token}"}
        new = await client.call("/v1/streaming.new", {"version": "v2"}, headers=auth, api_key=None)
        session_id = new.data["session_id"]
        assert (await client.call("/v1/streaming.start", {"session_id": session_id}, headers=auth,
                                  api_key=None)).status == 200
        listener = Listener()
        room = DataParticipant(new.data["url"], new.data["access_token"], listener.heard, lambda reason: None)
        await room.join(10)
        direct, bridged = [], []
        for _ in range(rounds):
            cmd = command("avatar.speak_text", TEXT)
            sent = time.perf_counter()
            room.publish(json.dumps(cmd).encode(), topic=COMMAND_TOPIC)
            direct.append(await wait_for(listener.started, cmd["event_id"]) - sent)
            await wait_for(listener.ended, cmd["event_id"])
            sent = time.perf_counter()
            task = await client.call("/v1/streaming.task", {"session_id": session_id, "text": TEXT},
                                     headers=auth, api_key=None)
            task_id = task.data["task_id"]
            bridged.append(await wait_for(listener.started, task_id) - sent)
            await wait_for(listener.ended, task_id)
        await room.leave()
        await client.call("/v1/streaming.stop", {"session_id": session_id}, headers=auth, api_key=None)
    finally:
        await sandbox.stop()
        mongo.stop()

    def ms(values, q):
        return 1000 * statistics.quantiles(values, n=100)[q - 1]
    print(f"{rounds} rounds each, ms from the request to avatar.speak_started heard in the room")
    print(f"{'':10}{'p50':>8}{'p90':>8}{'p99':>8}")
    for name, values in (("direct", direct), ("bridged", bridged)):
        print(f"{name:10}{ms(values, 50):8.2f}{ms(values, 90):8.2f}{ms(values, 99):8.2f}")
    print(f"added by the gateway (p50): {ms(bridged, 50) - ms(direct, 50):.2f} ms")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 60))
