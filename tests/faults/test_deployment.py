"""The deployment conf/ describes, run for real: Debian's nginx loading conf/nginx.conf.example with TLS in front of
two gateway processes (one restarted mid-session), and supervisord running conf/supervisor.conf.example (two
processes start; SIGTERM drains them within stopwaitsecs)."""
import asyncio
import os
import pathlib
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

from sandbox.stack import DEMO_API_KEY, Sandbox
from tests.helpers.client import eventually
from tests.helpers.flows import WS_PARAMS, avatar_done
from tests.helpers.processes import ROOT, GatewayProcess, Nginx, free_ports, make_certificate

pytestmark = pytest.mark.faults
HOST = "avatar.sandbox.test"


def substitute(text, old, new):
    """Replace a line of an example; fail if the example no longer has it (so this test follows the example)."""
    assert old in text, f"the example no longer contains {old!r}"
    return text.replace(old, new)


def nginx_for(directory, cert, key, ports):
    example = pathlib.Path(ROOT, "conf", "nginx.conf.example").read_text()
    example = substitute(example, "server 127.0.0.1:8001;", f"server 127.0.0.1:{ports[0]};")
    example = substitute(example, "server 127.0.0.1:8002;", f"server 127.0.0.1:{ports[1]};")
    example = substitute(example, "listen 443 ssl;", "listen 127.0.0.1:443 ssl;")
    example = substitute(example, "/etc/ssl/ilianaai-avatar/fullchain.pem", cert)
    example = substitute(example, "/etc/ssl/ilianaai-avatar/privkey.pem", key)
    return Nginx(directory, example)


@pytest.fixture
def world(io_loop, mongodb_server_uri, db_name):
    sandbox = Sandbox(mongodb_server_uri, database=db_name, SOCKET_GRACE_PERIOD="5", SWEEP_INTERVAL="0.25",
                      LEASE_HEARTBEAT="0.25", CORS_ORIGINS="https://shop.example.com")
    sandbox.heygen.seconds_per_word = 0.01  # the avatar speaks fast in tests
    sandbox.start_upstreams()
    yield sandbox
    io_loop.run_sync(sandbox.stop)


async def call(path, body=None, headers=None, method="POST"):
    """Through nginx: https on 127.0.0.1:443 (the certificate is this run's own)."""
    import json
    request = HTTPRequest(f"https://127.0.0.1{path}", method=method, validate_cert=False,
                          headers={"Host": HOST, "X-Api-Key": DEMO_API_KEY, "Content-Type": "application/json",
                                   **(headers or {})},
                          body=json.dumps(body or {}) if method == "POST" else None, request_timeout=20)
    response = await AsyncHTTPClient().fetch(request, raise_error=False)
    return response.code, json.loads(response.body) if response.body else None


async def open_socket(session_id, token):
    return await websocket_connect(HTTPRequest(
        f"wss://127.0.0.1/v1/ws/streaming.chat?session_id={session_id}&session_token={token}&{WS_PARAMS}",
        validate_cert=False, headers={"Host": HOST}))


@pytest.mark.skipif(not shutil.which("nginx") or not shutil.which("openssl"), reason="nginx/openssl not installed")
@pytest.mark.gen_test(timeout=90)
async def test_nginx_example_loads_and_carries_a_session_over_a_gateway_restart(world, tmp_path):
    ports = free_ports(2)
    gateways = [GatewayProcess(world.env, str(tmp_path / f"gateway-{n}.log"), port=port)
                for n, port in enumerate(ports)]
    loop = asyncio.get_running_loop()
    for gateway in gateways:
        await loop.run_in_executor(None, gateway.start)
    cert, key = make_certificate(str(tmp_path), HOST)
    nginx = nginx_for(str(tmp_path), cert, key, ports)
    ok, said = nginx.check()
    assert ok, said  # the example loads on this nginx (1.22 on Debian 12)
    try:
        nginx.start()
    except (RuntimeError, PermissionError) as exc:
        pytest.skip(f"nginx cannot listen on 127.0.0.1:443 here: {exc}")
    try:
        # REST through nginx with TLS.
        status, token = await call("/v1/streaming.create_token")
        assert status == 200
        token = token["data"]["token"]
        status, session = await call("/api/v1/avatar/v1/streaming.new", {"version": "v2",
                                                                         "conversation_id": "behind-nginx"})
        assert status == 200
        session_id = session["data"]["session_id"]
        # The WebSocket at the root path on port 443, as HeyGen's SDK opens it.
        ws = await open_socket(session_id, token)
        assert (await call("/v1/streaming.start", {"session_id": session_id}))[0] == 200
        assert (await call("/v1/streaming.task", {"session_id": session_id, "text": "Before the restart.",
                                                  "task_type": "repeat"}))[0] == 200
        await avatar_done(world, session_id)

        # Restart the process holding the socket (a deploy): the socket is told 1001, and comes back through nginx.
        holder = next(g for g in gateways if re.search(rf"ws/streaming\.chat 101 .*session={session_id}", g.log()))
        await loop.run_in_executor(None, holder.terminate)
        while await ws.read_message() is not None:
            pass
        assert ws.close_code == 1001
        ws.close()
        ws = await open_socket(session_id, token)  # nginx skips the process that is down
        assert (await call("/v1/streaming.task", {"session_id": session_id, "text": "After the restart.",
                                                  "task_type": "repeat"}))[0] == 200
        await avatar_done(world, session_id)
        await loop.run_in_executor(None, holder.start)  # back, on its port
        assert (await call("/v1/streaming.keep_alive", {"session_id": session_id}))[0] == 200
        assert (await call("/v1/streaming.stop", {"session_id": session_id}))[0] == 200
        await eventually(lambda: world.petya.deliveries("behind-nginx"))
        await asyncio.sleep(0.5)
        deliveries = world.petya.deliveries("behind-nginx")
        assert len(deliveries) == 1
        assert [t["transcript"] for t in deliveries[0]["transcript"]] == ["Before the restart.", "After the restart."]
        ws.close()
    finally:
        nginx.stop()
        for gateway in gateways:
            gateway.terminate()


def supervisor_conf(directory, env_file, ports, admin_ports, minfds):
    example = pathlib.Path(ROOT, "conf", "supervisor.conf.example").read_text()
    example = substitute(example, "directory = /srv/ilianaai-avatar", f"directory = {ROOT}")
    example = substitute(example, "/srv/ilianaai-avatar/.venv/bin/ilianaai-avatar --env-file /etc/ilianaai-avatar/.env",
                         f"{sys.executable} {ROOT}/server.py --env-file {env_file}")
    example = substitute(example, 'PORT="800%(process_num)d"', f'PORT="{ports[0] // 10}%(process_num)d"')
    example = substitute(example, 'ADMIN_ADDRESS="127.0.0.1:910%(process_num)d"',
                         f'ADMIN_ADDRESS="127.0.0.1:{admin_ports[0] // 10}%(process_num)d"')
    example = substitute(example, "user = ilianaai\n", "")
    example = substitute(example, "/var/log/ilianaai-avatar/", f"{directory}/")
    example = substitute(example, "minfds = 65536", f"minfds = {minfds}")
    return example + (f"logfile = {directory}/supervisord.log\npidfile = {directory}/supervisord.pid\n"
                      "nodaemon = true\n")


def port_block(count=2):
    """A block of ports p*10+1 .. p*10+count that are all free (the example numbers processes from 1)."""
    import socket
    for base in free_ports(20):
        tens = base // 10
        try:
            for n in range(1, count + 1):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", tens * 10 + n))
            return [tens * 10 + n for n in range(1, count + 1)]
        except OSError:
            continue
    raise RuntimeError("no free block of ports")


def answers(url):
    try:
        with urllib.request.urlopen(url, timeout=1) as reply:
            return reply.status == 200
    except OSError:
        return False


@pytest.mark.skipif(not shutil.which("supervisord", path=os.path.dirname(sys.executable) + os.pathsep
                                     + os.environ.get("PATH", "")), reason="supervisord not installed")
@pytest.mark.gen_test(timeout=90)
async def test_supervisor_example_starts_two_processes_and_sigterm_drains_them_within_stopwaitsecs(world, tmp_path):
    env_file = tmp_path / "gateway.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in world.env.items() if k not in ("PORT", "HOST")))
    ports, admin_ports = port_block(), port_block()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    minfds = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)  # what this machine allows
    conf = tmp_path / "supervisord.conf"
    conf.write_text(supervisor_conf(str(tmp_path), env_file, ports, admin_ports, minfds))
    stopwaitsecs = int(re.search(r"stopwaitsecs = (\d+)", conf.read_text()).group(1))
    supervisord = shutil.which("supervisord", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    process = subprocess.Popen([supervisord, "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT)
    try:
        for admin in admin_ports:  # both processes up, each with its own admin address
            await eventually(lambda: answers(f"http://127.0.0.1:{admin}/readyz"), timeout=30, interval=0.2)
        for port in ports:
            assert answers(f"http://127.0.0.1:{port}/demo")
        # A session opened on process 1 (the emulators answer on this test's IOLoop: an async client).
        minted = await AsyncHTTPClient().fetch(HTTPRequest(
            f"http://127.0.0.1:{ports[0]}/v1/sessions/token", method="POST", body=b'{"conversation_id": "sv"}',
            headers={"X-Api-Key": DEMO_API_KEY, "Content-Type": "application/json"}, request_timeout=10))
        assert minted.code == 200
        stopping = time.monotonic()
        process.send_signal(signal.SIGTERM)
        await asyncio.get_running_loop().run_in_executor(None, process.wait, stopwaitsecs + 10)
        took = time.monotonic() - stopping
        log = (tmp_path / "supervisord.log").read_text()
        print(f"\nsupervisord stopped both processes in {took:.2f}s (stopwaitsecs {stopwaitsecs})")
        assert took < stopwaitsecs
        assert "SIGKILL" not in log and len(re.findall(r"stopped: ilianaai-avatar-\d \(exit status 0\)", log)) == 2, log
        for n in (1, 2):
            assert "stopping" in (tmp_path / f"{n}.log").read_text()
    finally:
        if process.poll() is None:  # a failure above: supervisord still stops its processes (never orphaned)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(stopwaitsecs + 10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
