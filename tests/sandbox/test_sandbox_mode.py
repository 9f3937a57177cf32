"""`server.py --sandbox` as a newcomer runs it: everything starts, answers, and stops cleanly on SIGTERM; the
environment and `.env` apply on top of the sandbox's defaults, except the settings naming its own parts."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conf import SETTINGS
from sandbox.mongo import free_port

ROOT = Path(__file__).parent.parent.parent  # the repository


def read_banner(process, timeout=60):
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "first request:" in line:
            lines.append(process.stdout.readline())
            return "".join(lines)
    raise AssertionError("no banner:\n" + "".join(lines))


def test_sandbox_starts_everything_and_stops_cleanly(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MONGODB_URI"}
    env.update(PORT=str(port), PYTHONUNBUFFERED="1")
    process = subprocess.Popen([sys.executable, str(ROOT / "server.py"), "--sandbox"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = read_banner(process)
        gateway = f"http://127.0.0.1:{port}"
        assert f"demo console          {gateway}/demo#key=demo-customer-key&petya=http://127.0.0.1:" in banner
        for part in ("HeyGen emulator", "LiveAvatar emulator", "Petya reference", "MongoDB"):
            assert re.search(part + r"\s+\S+://127\.0\.0\.1:\d+", banner), part
        curl = banner.strip().splitlines()[-1].strip()
        assert curl.startswith("curl ") and curl.endswith(f"{gateway}/v1/streaming.create_token")
        request = urllib.request.Request(f"{gateway}/v1/streaming.create_token", method="POST", data=b"",
                                         headers={"X-Api-Key": "demo-customer-key",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert b'"token": "eyJ' in response.read()  # a JWT-shaped gateway token
        with urllib.request.urlopen(f"{gateway}/demo", timeout=10) as response:
            assert response.url == f"{gateway}/demo"  # the printed URL itself, no redirect
            assert b"<title>" in response.read()
        mongo_pids = subprocess.run(["pgrep", "-P", str(process.pid), "-f", "secantusd-rs"],
                                    capture_output=True, text=True).stdout.split()
        assert len(mongo_pids) == 1
        assert (tmp_path / ".sandbox-data" / "mongodb").is_dir()  # under the working directory, kept
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "Traceback" not in output
    assert subprocess.run(["kill", "-0", mongo_pids[0]], capture_output=True).returncode != 0  # child stopped


@pytest.mark.parametrize("hidden", ["numpy", "PIL"])
def test_sandbox_without_its_extra_says_how_to_install_it(hidden):
    """`--sandbox` with one of the sandbox extra's packages missing: one line on how to install it, no traceback."""
    script = f"import sys; sys.modules[{hidden!r}] = None; import server; sys.exit(server.main(['--sandbox']))"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"ilianaai-avatar: the sandbox needs its extra ({hidden} is not installed): pip install -e '.[sandbox]' in "
        "the checkout, or `make run`"]


def clean_environment(**settings):
    """This process's environment without any setting of the gateway (nor MONGODB_URI), plus `settings`."""
    declared = {setting.name for setting in SETTINGS}
    env = {k: v for k, v in os.environ.items() if k not in declared}
    env.update(PYTHONUNBUFFERED="1", **settings)
    return env


def post(url, body=b"", headers=None):
    """(status, parsed JSON body) of a POST."""
    request = urllib.request.Request(url, method="POST", data=body, headers={
        "X-Api-Key": "demo-customer-key", "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def test_environment_and_dotenv_apply_over_the_sandbox_defaults(tmp_path):
    """PETYA_CONFIG_TTL=1 in the environment wins over .env's 600 (and the default 60): a config change made through
    the Petya reference reaches the next session within 1.5 s. .env's MAX_BODY_SIZE and LOG_FORMAT are in force; its
    HEYGEN_BASE_URL and PETYA_AUTH_TOKEN, which name the sandbox's own parts, are ignored (with a warning)."""
    port = free_port()
    (tmp_path / ".env").write_text("PETYA_CONFIG_TTL=600\nMAX_BODY_SIZE=1024\nLOG_FORMAT=json\n"
                                   "HEYGEN_BASE_URL=http://127.0.0.1:9\nPETYA_AUTH_TOKEN=not-the-sandbox-token\n")
    env = clean_environment(PORT=str(port), PETYA_CONFIG_TTL="1")
    process = subprocess.Popen([sys.executable, str(ROOT / "server.py"), "--sandbox"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = read_banner(process)
        gateway = f"http://127.0.0.1:{port}"
        petya, petya_token = re.search(r"&petya=(\S+)&petyaToken=(\S+)", banner).groups()

        # The pinned settings were ignored: HeyGen's emulator answers, Petya's reference knows the gateway.
        status, first = post(f"{gateway}/v1/streaming.new", b'{"version": "v2"}')
        assert status == 200 and first["data"]["intro"] == "Hello and welcome. How can I help you today?", first
        # The config change, as the demo console makes it; the gateway cached the old one a moment ago.
        request = urllib.request.Request(f"{petya}/api/v1/admin/accounts/config", method="PUT",
                                         data=b'{"intro": "Changed a moment ago."}',
                                         headers={"X-Api-Key": "demo-customer-key",
                                                  "Authorization": f"Bearer {petya_token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read())["intro"] == "Changed a moment ago."
        time.sleep(1.5)  # > PETYA_CONFIG_TTL=1 since the first call cached it; < 600 and 60
        status, second = post(f"{gateway}/v1/streaming.new", b'{"version": "v2"}')
        assert status == 200 and second["data"]["intro"] == "Changed a moment ago.", second

        # MAX_BODY_SIZE=1024 from .env: a 2 KB body is refused (the default, 64 KiB, takes it).
        status, body = post(f"{gateway}/v1/streaming.create_token", json.dumps({"pad": "x" * 2000}).encode())
        assert status == 413, body
        assert post(f"{gateway}/v1/streaming.create_token", b"{}")[0] == 200
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    output = banner + output
    assert process.returncode == 0, output
    assert "Traceback" not in output
    # LOG_FORMAT=json from .env: the logs are JSON objects, the access lines among them.
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert any(r.get("logger") == "gateway.access" and r.get("path") == "/v1/streaming.create_token"
               and r.get("status") == 413 for r in records), output
    warnings = {r["message"].split()[0] for r in records if r["level"] == "WARNING" and r["logger"] == "sandbox"}
    assert warnings == {"HEYGEN_BASE_URL", "PETYA_AUTH_TOKEN"}, output


def test_a_bad_setting_stops_the_sandbox_with_one_line(tmp_path):
    """As production: one line naming the setting, exit status 2, nothing started."""
    (tmp_path / ".env").write_text("SWEEP_INTERVAL=often\n")
    result = subprocess.run([sys.executable, str(ROOT / "server.py"), "--sandbox"], cwd=tmp_path,
                            env=clean_environment(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        "ilianaai-avatar: SWEEP_INTERVAL='often' is invalid: could not convert string to float: 'often'"]
    assert not (tmp_path / ".sandbox-data").exists()
