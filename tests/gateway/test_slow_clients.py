"""Slow and oversized clients, over raw sockets against a real sandbox gateway with small limits: idle keep-alive
connections and slowloris headers are cut off after HTTP_IDLE_TIMEOUT, slow bodies after HTTP_BODY_TIMEOUT, and a
body over MAX_BODY_SIZE gets a JSON 413 (with CORS headers) before it is read, then the connection closes (lingeringly:
tests/gateway/test_lingering_close.py)."""
import asyncio
import json
import time

import pytest

from sandbox.stack import DEMO_API_KEY

ALLOWED = "https://shop.example.com"
LIMITS = dict(HTTP_IDLE_TIMEOUT="1", HTTP_BODY_TIMEOUT="1", MAX_BODY_SIZE="4096")


@pytest.fixture
def gateway(io_loop, make_sandbox):
    return io_loop.run_sync(lambda: make_sandbox(**LIMITS))


async def connect(sandbox):
    return await asyncio.open_connection("127.0.0.1", sandbox.gateway.port)


async def close(writer):
    writer.close()
    try:
        await writer.wait_closed()
    except ConnectionError:
        pass


async def read_answer(reader, timeout=5):
    """(status, headers with lower-case names, body) of one answer, read by its Content-Length."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {name.strip().lower(): value.strip()
               for name, value in (line.split(":", 1) for line in lines[1:] if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), timeout)
    return status, headers, body


async def closed_after(reader, timeout):
    """Seconds until the server closes the connection (EOF), reading and discarding whatever comes."""
    started = time.monotonic()
    try:
        while await asyncio.wait_for(reader.read(65536), timeout):
            pass
    except ConnectionResetError:
        pass  # closed while our bytes were still arriving: the kernel answers those with a reset
    return time.monotonic() - started


def request(path, body=b"", method="POST", **headers):
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    head += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def sized_task(size):
    """A streaming.new body of exactly `size` bytes (quality low plus padding)."""
    body = {"quality": "low", "version": "v2", "pad": ""}
    body["pad"] = "x" * (size - len(json.dumps(body)))
    raw = json.dumps(body).encode()
    assert len(raw) == size
    return raw


@pytest.mark.gen_test(timeout=20)
async def test_idle_keep_alive_connection_is_closed_after_the_idle_timeout(gateway):
    reader, writer = await connect(gateway)
    writer.write(request("/healthz", method="GET"))
    status, headers, _ = await read_answer(reader)
    assert status == 200 and headers.get("connection", "").lower() != "close"  # kept alive
    idle = await closed_after(reader, timeout=5)
    assert 0.8 < idle < 2.5, idle
    await close(writer)
    # A connection that never sends a byte goes the same way.
    reader, writer = await connect(gateway)
    assert 0.8 < await closed_after(reader, timeout=5) < 2.5
    await close(writer)


@pytest.mark.gen_test(timeout=20)
async def test_slowloris_headers_are_cut_off(gateway):
    reader, writer = await connect(gateway)
    data = request("/healthz", method="GET", X_Padding="p" * 200)
    started = time.monotonic()
    cut_off = None
    for byte in data:  # one byte every 20 ms: the headers would take ~5 s
        if reader.at_eof():
            cut_off = time.monotonic() - started
            break
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            cut_off = time.monotonic() - started
            break
        await asyncio.sleep(0.02)
    if cut_off is None:
        cut_off = time.monotonic() - started + await closed_after(reader, timeout=5)
    assert 0.8 < cut_off < 2.5, cut_off
    try:
        assert await reader.read() == b""  # closed without an answer
    except ConnectionResetError:
        pass  # closed while our bytes were still arriving: the kernel answers those with a reset
    await close(writer)


@pytest.mark.gen_test(timeout=20)
async def test_slow_body_is_cut_off_after_the_body_timeout(gateway):
    reader, writer = await connect(gateway)
    body = sized_task(1000)
    writer.write(request("/v1/streaming.new", body, X_Api_Key=DEMO_API_KEY)[:-len(body)] + body[:10])
    started = time.monotonic()
    sent = 10
    while sent < len(body) and not reader.at_eof() and time.monotonic() - started < 5:
        try:
            writer.write(body[sent:sent + 1])
            await writer.drain()
        except ConnectionError:
            break
        sent += 1
        await asyncio.sleep(0.05)  # the whole body would take ~50 s
        if reader._buffer or reader.at_eof():
            break
    elapsed = time.monotonic() - started + await closed_after(reader, timeout=5)
    assert 0.8 < elapsed < 2.5, elapsed
    assert sent < len(body)
    assert not gateway.heygen.recorder.calls("/v1/streaming.new")  # the handler never ran
    await close(writer)


@pytest.mark.parametrize("expect", [False, True])
@pytest.mark.gen_test(timeout=20)
async def test_body_over_the_limit_is_a_json_413_before_it_is_read(gateway, expect):
    reader, writer = await connect(gateway)
    big = b"x" * (2 << 20)  # 2 MB, declared up front
    extra = {"Expect": "100-continue"} if expect else {}
    head = request("/v1/streaming.task", big, X_Api_Key=DEMO_API_KEY, Origin=ALLOWED,
                   Content_Type="application/json", **extra)[:-len(big)]
    writer.write(head + big[:1000])  # the headers and a sliver of the body
    await writer.drain()
    status, headers, body = await read_answer(reader)
    assert status == 413, (status, body)  # not "100 Continue": nothing more is wanted
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body) == {"code": 413, "message": "request body exceeds 4096 bytes"}
    assert headers["access-control-allow-origin"] == ALLOWED
    assert headers["connection"] == "close"
    assert await closed_after(reader, timeout=2) < 1  # half-closed at once, without waiting for the rest
    # The rest is read and discarded, but not forever (handlers/linger.py): 40 MB more are cut off at LINGER_BYTES.
    with pytest.raises(ConnectionError):
        for _ in range(20):
            writer.write(big[1000:])
            await writer.drain()
            await asyncio.sleep(0.05)
    await close(writer)


@pytest.mark.gen_test(timeout=20)
async def test_chunked_body_going_over_the_limit_is_a_json_413(gateway):
    reader, writer = await connect(gateway)
    writer.write(b"POST /api/v1/avatar/v1/streaming.new HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Transfer-Encoding: chunked\r\nOrigin: " + ALLOWED.encode() + b"\r\n\r\n")
    for _ in range(5):  # 5 x 1000 bytes: over 4096 at the fifth chunk
        writer.write(b"3e8\r\n" + b"y" * 1000 + b"\r\n")
    await writer.drain()
    status, headers, body = await read_answer(reader)
    assert status == 413 and json.loads(body)["code"] == 413
    assert headers["access-control-allow-origin"] == ALLOWED
    assert await closed_after(reader, timeout=2) < 1
    await close(writer)


@pytest.mark.parametrize("path", ["/v1/no.such.route", "/demo", "/demo/demo.html", "/v1/ws/streaming.chat"])
@pytest.mark.gen_test(timeout=20)
async def test_other_routes_answer_big_bodies_in_json_too(gateway, path):
    reader, writer = await connect(gateway)
    writer.write(request(path, b"z" * 8000, Origin=ALLOWED))
    await writer.drain()
    status, headers, body = await read_answer(reader)
    assert status == 413, (status, body)
    assert headers["content-type"].startswith("application/json") and json.loads(body)["code"] == 413
    assert headers["access-control-allow-origin"] == ALLOWED
    await close(writer)


@pytest.mark.gen_test(timeout=20)
async def test_body_at_the_limit_still_works(gateway):
    for size, status in [(4096, 200), (4097, 413)]:
        reader, writer = await connect(gateway)
        writer.write(request("/v1/streaming.new", sized_task(size), X_Api_Key=DEMO_API_KEY,
                             Content_Type="application/json"))
        got, _, body = await read_answer(reader)
        assert got == status, (size, got, body)
        await close(writer)
    # Chunked, in pieces, just under the limit: read whole and used.
    reader, writer = await connect(gateway)
    raw = sized_task(4000)
    writer.write(b"POST /v1/streaming.new HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                 b"X-Api-Key: " + DEMO_API_KEY.encode() + b"\r\n\r\n")
    for start in range(0, len(raw), 700):
        piece = raw[start:start + 700]
        writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        await writer.drain()
        await asyncio.sleep(0.01)
    writer.write(b"0\r\n\r\n")
    got, _, body = await read_answer(reader)
    assert got == 200, body
    assert gateway.heygen.recorder.calls("/v1/streaming.new")[-1].json()["pad"] == "x" * len(json.loads(raw)["pad"])
    await close(writer)
