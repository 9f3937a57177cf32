"""A body over MAX_BODY_SIZE sent straight to the gateway (no nginx in front) by a client that writes the whole body
before it reads anything — a browser, curl, Python's http.client — still gets to read the JSON 413: the gateway
answers from the headers, then closes lingeringly (handlers/linger.py): half-closes, reads and discards the rest for a
bounded time and number of bytes, then closes. And a path that tries to leave /demo's folder is a plain JSON 404 that
does not echo the path.

Real clients over real sockets: blocking sockets and http.client in threads (they block in sendall until the gateway
has taken the whole body), raw requests for the paths (clients normalize `..`)."""
import asyncio
import functools
import http.client
import json
import socket
import threading
import time

import pytest

from handlers import linger
from sandbox.stack import DEMO_API_KEY

ALLOWED = "https://shop.example.com"
BIG = 2 << 20  # 2 MB


@pytest.fixture
def gateway(io_loop, make_sandbox):
    return io_loop.run_sync(lambda: make_sandbox(CORS_ORIGINS=ALLOWED, MAX_BODY_SIZE="4096"))


def in_thread(function, *args, **kwargs):
    return asyncio.get_running_loop().run_in_executor(None, functools.partial(function, *args, **kwargs))


def head(path, length, method="POST", **headers):
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {length}", f"Origin: {ALLOWED}",
             "Content-Type: application/json", f"X-Api-Key: {DEMO_API_KEY}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse(data):
    """(status, headers with lower-case names, body) of one raw answer."""
    head_, _, body = data.partition(b"\r\n\r\n")
    lines = head_.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, value in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split(" ")[1]), headers, body[:int(headers.get("content-length", "0"))]


def send_all_then_read(port, path="/v1/streaming.task", size=BIG, **headers):
    """What a naive client does: sendall the headers and the whole body (blocking), then read the answer to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head(path, size, **headers) + b"x" * size)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return parse(data)


def assert_json_413(status, headers, body):
    assert status == 413, (status, body)
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body) == {"code": 413, "message": "request body exceeds 4096 bytes"}
    assert headers["access-control-allow-origin"] == ALLOWED
    assert headers["connection"] == "close"


@pytest.mark.parametrize("path", ["/v1/streaming.task", "/api/v1/avatar/v1/sessions/token", "/v1/no.such.route",
                                  "/v1/ws/streaming.chat", "/demo/demo.js"])
@pytest.mark.gen_test(timeout=30)
async def test_a_client_sending_the_whole_2mb_body_first_reads_the_json_413(gateway, path):
    assert_json_413(*await in_thread(send_all_then_read, gateway.gateway.port, path))


@pytest.mark.gen_test(timeout=30)
async def test_expect_100_continue_and_http_client_read_the_413_too(gateway):
    port = gateway.gateway.port
    assert_json_413(*await in_thread(send_all_then_read, port, "/v1/streaming.new", BIG, Expect="100-continue"))

    def with_http_client():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("POST", "/v1/streaming.new", body=b"{" + b" " * BIG + b"}",
                               headers={"Origin": ALLOWED, "X-Api-Key": DEMO_API_KEY})  # sendall, then read
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()
    assert_json_413(*await in_thread(with_http_client))


@pytest.mark.gen_test(timeout=30)
async def test_a_chunked_body_going_over_is_read_as_a_413_as_well(gateway):
    def chunked():
        with socket.create_connection(("127.0.0.1", gateway.gateway.port), timeout=10) as sock:
            request = head("/v1/streaming.task", 0).replace(b"Content-Length: 0", b"Transfer-Encoding: chunked")
            piece = b"y" * 65536
            sock.sendall(request + (b"%x\r\n%s\r\n" % (len(piece), piece)) * 32 + b"0\r\n\r\n")  # 2 MB in chunks
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return parse(data)
    assert_json_413(*await in_thread(chunked))


@pytest.mark.gen_test(timeout=60)
async def test_under_load_every_client_reads_its_413_and_the_loop_keeps_answering(gateway):
    """40 clients at once, each pushing 2 MB without reading; meanwhile /healthz answers promptly."""
    port = gateway.gateway.port
    answers = [in_thread(send_all_then_read, port) for _ in range(40)]

    def health():
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            started = time.monotonic()
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            return parse(data)[0], time.monotonic() - started
    status, took = await in_thread(health)
    assert status == 200 and took < 1, took
    for answer in await asyncio.gather(*answers):
        assert_json_413(*answer)
    assert not gateway.gateway.server.lingering.connections  # all closed, none left behind


def keep_sending(port, pause, stop_after=30.0):
    """Headers declaring 10 GB, then the body forever (a chunk every `pause` s) while reading: (answer, seconds from
    the end of the answer to the gateway cutting the connection off, bytes sent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head("/v1/streaming.task", 10 << 30))
        sock.setblocking(False)
        data, answered, sent, chunk = b"", None, 0, b"z" * (16384 if pause else 65536)
        started = time.monotonic()
        while time.monotonic() - started < stop_after:
            try:
                while True:
                    got = sock.recv(65536)
                    if not got:  # the half-close: the answer is complete
                        answered = answered or time.monotonic()
                        break
                    data += got
            except BlockingIOError:
                pass
            except ConnectionError:
                return parse(data), time.monotonic() - (answered or started), sent
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                time.sleep(0.001)
            except (ConnectionError, OSError):
                return parse(data), time.monotonic() - (answered or started), sent
            if pause:
                time.sleep(pause)
        raise AssertionError(f"still connected after {stop_after} s ({sent} bytes sent)")


@pytest.mark.gen_test(timeout=40)
async def test_a_client_sending_forever_is_cut_off_at_the_byte_bound(gateway):
    answer, cut_off, sent = await in_thread(keep_sending, gateway.gateway.port, 0)
    assert_json_413(*answer)  # read while still sending
    assert cut_off < linger.LINGER_SECONDS, cut_off
    assert sent < linger.LINGER_BYTES + (16 << 20), sent  # the bound, plus what the two kernels buffer


@pytest.mark.gen_test(timeout=40)
async def test_a_slow_client_sending_forever_is_cut_off_at_the_time_bound(gateway):
    answer, cut_off, sent = await in_thread(keep_sending, gateway.gateway.port, 0.05)  # ~320 KB/s: under the bytes
    assert_json_413(*answer)
    assert linger.LINGER_SECONDS - 0.5 < cut_off < linger.LINGER_SECONDS + 2, cut_off
    assert sent < linger.LINGER_BYTES


@pytest.mark.gen_test(timeout=40)
async def test_a_client_that_stops_sending_without_closing_is_closed_after_the_idle_bound(gateway):
    """Part of the body, then silence with the socket open: the gateway closes it LINGER_IDLE after the last byte."""
    lingering = gateway.gateway.server.lingering
    done = threading.Event()

    def stall(answered):
        with socket.create_connection(("127.0.0.1", gateway.gateway.port), timeout=10) as sock:
            sock.sendall(head("/v1/streaming.task", BIG) + b"x" * 10000)
            data = b""
            while chunk := sock.recv(65536):  # the answer, then the half-close (EOF)
                data += chunk
            answered.append((parse(data), time.monotonic()))
            done.wait(15)  # silent, the socket open
            try:
                sock.sendall(b"x" * 1000)
                time.sleep(0.2)
                sock.sendall(b"x" * 1000)
                return False
            except ConnectionError:
                return True  # the gateway had closed: its kernel answered our bytes with a reset

    answered = []
    client = in_thread(stall, answered)
    while not answered:
        await asyncio.sleep(0.01)
    assert_json_413(*answered[0][0])
    while lingering.connections and time.monotonic() - answered[0][1] < 10:
        await asyncio.sleep(0.02)
    closed = time.monotonic() - answered[0][1]
    done.set()
    assert linger.LINGER_IDLE - 0.3 < closed < linger.LINGER_IDLE + 1, closed
    assert await client


# --- /demo: paths that try to leave its folder ---------------------------------------------------------------------

ESCAPES = [
    "/demo/../../etc/passwd", "/demo/../server.py", "/demo/../../../../../../etc/passwd", "/demo/..",
    "/demo/../", "/demo/./../setup.py", "/demo/vendor/../../setup.py", "/demo/vendor/../../../etc/passwd",
    "/demo/%2e%2e/%2e%2e/etc/passwd", "/demo/%2E%2E/%2E%2E/etc/passwd", "/demo/%2e./setup.py", "/demo/.%2e/setup.py",
    "/demo/..%2f..%2fsetup.py", "/demo/..%2F..%2Fetc%2Fpasswd", "/demo/%2e%2e%2f%2e%2e%2fsetup.py",
    "/demo/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/demo/..%5c..%5csetup.py", "/demo/..\\..\\setup.py",
    "/demo/%252e%252e/%252e%252e/setup.py", "/demo/..%252f..%252fsetup.py",
    "/demo/%c0%ae%c0%ae/%c0%ae%c0%ae/setup.py", "/demo/%c0%af..%c0%afsetup.py", "/demo/%e0%80%ae%e0%80%ae/setup.py",
    "/demo/%ef%bc%8e%ef%bc%8e/setup.py", "/demo/..%00/setup.py", "/demo/%00", "/demo/demo.js%00.html",
    "/demo//etc/passwd", "/demo/%2fetc%2fpasswd", "/demo/%2Fetc/passwd", "/demo///etc/passwd",
    "/demo/....//....//setup.py", "/demo/..;/setup.py", "/demo/.../setup.py", "/demo/vendor", "/demo/vendor/",
    "/demo/.", "/demo/./", "/demo/%2e", "/demo/.git/config", "/demo/%2e%2e", "/demo/..%ff/setup.py",
    "/demo/%ff%fe", "/demo/~/.bashrc", "/demo/../handlers/static/demo.html",
    "/demo/../../../../../../../../../../../../../../../../../../../../../../../../etc/passwd",
]


def raw_get(port, path, method="GET"):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: {ALLOWED}\r\nConnection: close\r\n\r\n"
                     .encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return parse(data)


@pytest.mark.gen_test(timeout=30)
async def test_a_path_leaving_the_demo_folder_is_a_plain_json_404_that_does_not_echo_it(gateway):
    port = gateway.gateway.port
    for path in ESCAPES:
        for method in ("GET", "HEAD"):
            status, headers, body = await in_thread(raw_get, port, path, method)
            assert status == 404, (path, method, status, body)
            assert headers["content-type"].startswith("application/json"), (path, headers)
            assert headers["access-control-allow-origin"] == ALLOWED, (path, headers)
            if method == "GET":
                assert json.loads(body) == {"code": 404, "message": "no such file"}, (path, body)
            else:
                assert body == b""
    # What the console serves is still served.
    for path in ["/demo", "/demo/", "/demo/demo.html", "/demo/demo.js", "/demo/demo.css", "/demo/demo-room.js",
                 "/demo/vendor/package.json", "/demo/demo.js?v=1"]:
        status, headers, body = await in_thread(raw_get, port, path)
        assert status == 200 and body, (path, status, body[:200])
