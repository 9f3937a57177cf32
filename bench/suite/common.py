"""What every part of the bench shares: where results go, the bench customer and databases, the session request,
log(), and two asyncio helpers."""
import asyncio
import os
import sys
import time

from suite import ROOT

RESULTS_DIR = os.path.join(ROOT, "bench", "results")
CUSTOMER_KEY = "bench-customer-key"
GATEWAY_DB = "bench_gateway"
PETYA_DB = "bench_petya"
# The query the HeyGen SDK puts on the streaming.chat socket (as in tests/helpers/flows.py).
WS_PARAMS = [("silence_response", "false"), ("opening_text", ""), ("stt_language", "en"), ("enable_tts", "true"),
             ("enable_stt", "false")]
NEW_SESSION_BODY = {"quality": "low", "version": "v2", "activity_idle_timeout": 3600}


def log(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def bounded_gather(factories, concurrency):
    semaphore = asyncio.Semaphore(concurrency)

    async def run(factory):
        async with semaphore:
            return await factory()
    return await asyncio.gather(*(run(f) for f in factories))


async def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
