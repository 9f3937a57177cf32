"""`ilianaai-avatar --sandbox`: the whole flow on one machine with no HeyGen, LiveAvatar or Petya account.

Starts, on loopback: the MongoDB-compatible server as a child process (unless MONGODB_URI is set; its data stays
in ./.sandbox-data between runs), the HeyGen and LiveAvatar emulators, the Petya reference with a demo customer,
and the gateway configured as in production but pointed at them. Ctrl-C or SIGTERM stops it all cleanly.

Settings are read as production reads them (conf.configured: the environment, then the `--env-file`, default `.env`
in the working directory; the environment wins) and apply on top of the sandbox's own DEFAULTS — except PINNED, the
settings that name the sandbox's own parts, which a value from outside is ignored for (with a warning). HOST is where
every part listens, PORT the gateway's port, MONGODB_URI the server the sandbox keeps its own databases on.
"""
import asyncio
import logging
import os
import signal
import sys

from conf import SETTINGS, ConfigError, configured, parse_setting
from observability import metrics
from observability.logs import configure_logging
from observability.stalls import StallWatch
from sandbox.mongo import MongoServer
from sandbox.stack import DEMO_API_KEY, Sandbox

log = logging.getLogger("sandbox")

DATA_DIR = ".sandbox-data"

# The sandbox's own defaults, which the environment and .env override: any origin (the demo console is served by the
# gateway on whatever port), a fixed secret (customer ids stay the same across runs on the kept data), and a quick
# reaper (a closed demo session ends within seconds).
DEFAULTS = {
    "CORS_ORIGINS": "*",
    "GATEWAY_SECRET": "sandbox-only-gateway-secret",
    "SOCKET_GRACE_PERIOD": "10",
    "SWEEP_INTERVAL": "2",
}

# What the environment and .env cannot change in the sandbox, and why. The upstreams' addresses and keys are the
# sandbox's own emulators and Petya reference, started on ports only known once they listen: a value from outside
# (a production .env, say) would send the sandbox's calls, with a real key, to a real service, or break the sandbox.
_OWN_PART = "the sandbox's {} serves it"
PINNED = {
    "HEYGEN_API_KEY": _OWN_PART.format("HeyGen emulator"),
    "HEYGEN_BASE_URL": _OWN_PART.format("HeyGen emulator"),
    "LIVEAVATAR_API_KEY": _OWN_PART.format("LiveAvatar emulator"),
    "LIVEAVATAR_BASE_URL": _OWN_PART.format("LiveAvatar emulator"),
    "PETYA_BASE_URL": _OWN_PART.format("Petya reference"),
    "PETYA_AUTH_TOKEN": _OWN_PART.format("Petya reference"),
    "EVENT_LOOP": "the sandbox runs on asyncio's event loop",
}

_DECLARED = {setting.name: setting.default for setting in SETTINGS}


def sandbox_settings(environ=None, dotenv_path=".env"):
    """(settings, ignored): the settings the sandbox starts with, as raw strings — DEFAULTS under what the environment
    and the dotenv file set, less PINNED — each validated (ConfigError naming the first bad one); and the PINNED
    names that were set, ignored."""
    given = configured(environ, dotenv_path)
    ignored = sorted(name for name in given if name in PINNED)
    settings = DEFAULTS | {name: raw for name, raw in given.items() if name not in PINNED}
    for name, raw in settings.items():
        parse_setting(name, raw)
    return settings, ignored


def value(settings, name):
    """The parsed value of `name` in `settings`, else its declared default."""
    return parse_setting(name, settings.get(name, _DECLARED[name]))


def banner(sandbox, mongodb_uri, settings=None):
    gateway = sandbox.gateway_url
    petya = sandbox.served["petya"]
    demo = (f"{gateway}/demo#key={sandbox.demo_api_key}&petya={petya.url}"
            f"&petyaToken={sandbox.petya.service_token}")
    public = sandbox.settings.public()
    applied = ", ".join(f"{name}={public[name]}" for name in sorted(settings or {}) if name not in DEFAULTS
                        or settings[name] != DEFAULTS[name])
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
        *([f"  settings applied      {applied}   (environment and .env)"] if applied else []),
        f"  demo customer API key {sandbox.demo_api_key}",
        "  first request:",
        f"    curl -s -X POST -H 'X-Api-Key: {sandbox.demo_api_key}' -H 'Content-Type: application/json' "
        f"{gateway}/v1/streaming.create_token",
        "",
    ])


async def run_sandbox(settings=None, data_dir=DATA_DIR):
    """Run it all until SIGTERM or SIGINT. `settings`: raw setting values (sandbox_settings()), DEFAULTS if None."""
    settings = dict(DEFAULTS if settings is None else settings)
    host, port = value(settings, "HOST"), value(settings, "PORT")
    mongodb_uri = settings.pop("MONGODB_URI", None)
    overrides = {name: raw for name, raw in settings.items() if name not in ("HOST", "PORT")}
    mongo = None
    if not mongodb_uri:
        mongo = MongoServer(os.path.join(os.path.abspath(data_dir), "mongodb"), host=host).start()
        mongodb_uri = mongo.uri
    sandbox = Sandbox(mongodb_uri, host=host, gateway_port=port, demo_api_key=DEMO_API_KEY, **overrides)
    try:
        await sandbox.start()
        print(banner(sandbox, mongodb_uri, settings), flush=True)
        metrics.time_gc_pauses()  # as server.py's serve() does: the loop here also runs the emulators
        stalls = StallWatch()
        stalls.start()
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        await stopping.wait()
        stalls.stop()
        print("stopping the sandbox ...", flush=True)
    finally:
        await sandbox.stop()
        if mongo:
            mongo.stop()


def main(env_file=".env"):
    """`--sandbox`: read the settings, set up logging, run; the exit status (2: a bad setting, named on stderr)."""
    try:
        settings, ignored = sandbox_settings(dotenv_path=env_file)
    except ConfigError as exc:
        print(f"ilianaai-avatar: {exc}", file=sys.stderr)
        return 2
    configure_logging(value(settings, "LOG_LEVEL"), value(settings, "LOG_FORMAT"))
    for name in ignored:
        log.warning("%s from the environment or %s is ignored: %s", name, env_file, PINNED[name])
    asyncio.run(run_sandbox(settings))
    return 0
