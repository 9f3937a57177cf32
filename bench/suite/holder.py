"""Part 7's browsers in a child process of their own: opens WebSocket clients to the URLs it is given and holds them
until told to close. The bench process keeps the emulator's side of every relayed socket, so with the browsers here
each process needs one descriptor per socket instead of two (the hard open-files limit of a container may be no more
than 2 per socket for 10,000).

Protocol: one JSON object per line. stdin: {"open": [url, ...], "concurrency": 50, "nodelay": 1} |
{"close": true} | {"exit": true}. stdout: {"progress": n} every 1000 sockets, then {"opened": n, "handshakes":
[seconds], "errors": [message], "opened_at_first_error": n | null}; {"closed": n}. Run by bench/suite/idle.py."""
import asyncio
import json
import resource
import sys
import time

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

GIVE_UP_AFTER = 20  # failed opens before it stops opening more


def say(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def open_all(clients, urls, concurrency, nodelay):
    semaphore = asyncio.Semaphore(concurrency)
    handshakes, errors = [], []
    first_error_at = None

    async def one(url):
        nonlocal first_error_at
        async with semaphore:
            if len(errors) >= GIVE_UP_AFTER:
                return
            t0 = time.perf_counter()
            for attempt in range(40):  # a 503 (MongoDB queue full) is retried, as a client would
                try:
                    ws = await websocket_connect(HTTPRequest(url, connect_timeout=15, request_timeout=30))
                    break
                except HTTPClientError as exc:
                    if exc.code == 503 and attempt < 39:
                        await asyncio.sleep(0.25)
                        continue
                    error = exc
                except Exception as exc:
                    error = exc
                if first_error_at is None:
                    first_error_at = len(clients)
                errors.append(f"{type(error).__name__}: {error}"[:200])
                return
            if nodelay:
                ws.protocol.set_nodelay(True)
            handshakes.append(time.perf_counter() - t0)
            clients.append(ws)
            if len(clients) % 1000 == 0:
                say({"progress": len(clients)})
    await asyncio.gather(*(one(url) for url in urls))
    say({"opened": len(clients), "handshakes": handshakes, "errors": errors, "opened_at_first_error": first_error_at})


async def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)  # one line carries every URL
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    clients = []
    while line := await reader.readline():
        command = json.loads(line)
        if "open" in command:
            await open_all(clients, command["open"], command.get("concurrency", 50), command.get("nodelay", 1))
        elif command.get("close"):
            for ws in clients:
                ws.close()
            say({"closed": len(clients)})
            clients.clear()
        elif command.get("exit"):
            return


if __name__ == "__main__":
    asyncio.run(main())
