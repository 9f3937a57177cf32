"""`ilianaai-avatar --sandbox`: the whole flow on one machine with no HeyGen, LiveAvatar or Petya account.

Starts, on loopback: the MongoDB-compatible server as a child process (unless MONGODB_URI is set; its data stays
in ./.sandbox-data between runs), the HeyGen and LiveAvatar emulators, the Petya reference with a demo customer,
and the gateway configured as in production but pointed at them. Ctrl-C or SIGTERM stops it all cleanly.
"""
import asyncio
import os
import signal

from sandbox.mongo import MongoServer
from sandbox.stack import DEMO_API_KEY, Sandbox

DATA_DIR = ".sandbox-data"


def banner(sandbox, mongodb_uri):
    gateway = sandbox.gateway_url
    petya = sandbox.served["petya"]
    demo = (f"{gateway}/demo#key={sandbox.demo_api_key}&petya={petya.url}"
            f"&petyaToken={sandbox.petya.service_token}")
    return "\n".join([
        "",
        "ilianaai-avatar sandbox is running (Ctrl-C to stop)",
        f"  demo console          {demo}",
        f"  gateway               {gateway}   (routes also under {gateway}/api/v1/avatar)",
        f"  HeyGen emulator       {sandbox.served['heygen'].url}",
        f"  LiveAvatar emulator   {sandbox.served['liveavatar'].url}",
        f"  LiveKit rooms         {sandbox.rooms.url}",
        f"  Petya reference       {petya.url}",
        f"  MongoDB               {mongodb_uri}",
        f"  demo customer API key {sandbox.demo_api_key}",
        "  first request:",
        f"    curl -s -X POST -H 'X-Api-Key: {sandbox.demo_api_key}' -H 'Content-Type: application/json' "
        f"{gateway}/v1/streaming.create_token",
        "",
    ])


async def run_sandbox(host="127.0.0.1", port=8000, data_dir=DATA_DIR):
    mongo = None
    mongodb_uri = os.environ.get("MONGODB_URI")
    if not mongodb_uri:
        mongo = MongoServer(os.path.join(os.path.abspath(data_dir), "mongodb"), host=host).start()
        mongodb_uri = mongo.uri
    sandbox = Sandbox(mongodb_uri, host=host, gateway_port=port, demo_api_key=DEMO_API_KEY,
                      CORS_ORIGINS="*", GATEWAY_SECRET="sandbox-only-gateway-secret",
                      SOCKET_GRACE_PERIOD="10", SWEEP_INTERVAL="2")
    try:
        await sandbox.start()
        print(banner(sandbox, mongodb_uri), flush=True)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        await stopping.wait()
        print("stopping the sandbox ...", flush=True)
    finally:
        await sandbox.stop()
        if mongo:
            mongo.stop()
