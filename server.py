"""ilianaai-avatar: the avatar-session gateway. `python server.py` (or `ilianaai-avatar`) starts it.

The entry point only: read the settings, set up logging and the event loop, build the gateway (handlers/app.py),
serve until SIGTERM/SIGINT, stop gracefully. Nothing imports this module."""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import resource
import signal
import sys

from conf import ConfigError, Settings, load_settings
from domain.errors import ServiceUnavailable
from handlers.app import Gateway
from observability import metrics
from observability.logs import configure_logging
from observability.stalls import StallWatch

log = logging.getLogger("gateway")


# Descriptors besides the sockets' two each: MongoDB's pool, the curl client's, the room agents' (a few each), files.
SPARE_DESCRIPTORS = 1024


def raise_open_files(sockets: int) -> tuple[int, int]:
    """Raise the soft open-files limit to what `sockets` relayed sockets need (as far as the hard limit allows);
    returns (what they need, the soft limit now)."""
    needed = 2 * sockets + SPARE_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return needed, resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def serve(settings: Settings) -> int:
    needed, limit = raise_open_files(settings.max_sockets)
    if limit < needed:
        log.warning("open files limit %d is below the %d that MAX_SOCKETS=%d needs: sockets beyond ~%d will fail; "
                    "raise the hard limit (supervisor: minfds; shell: ulimit -n) or lower MAX_SOCKETS", limit, needed,
                    settings.max_sockets, max(0, (limit - SPARE_DESCRIPTORS) // 2))
    gateway = Gateway.build(settings)
    try:
        await gateway.start()
    except ServiceUnavailable:
        print("ilianaai-avatar: MongoDB at MONGODB_URI is unreachable", file=sys.stderr)
        await gateway.stop()
        return 1
    log.info("ilianaai-avatar listening on http://%s:%s", settings.host, gateway.port)
    if gateway.admin_port and settings.admin_address:
        log.info("metrics and health on http://%s:%s (/metrics, /readyz, /healthz)", settings.admin_address[0],
                 gateway.admin_port)
    if not gateway.fast_relay:
        log.info("the socket relay moves frames with its plain pump (RELAY_PUMP)")
    log.info("settings: %s", settings.public())
    metrics.time_gc_pauses()
    stalls = StallWatch()
    stalls.start()
    # What exists now (modules, settings, routes, clients) lives as long as the process: out of the collector's sight,
    # so a full collection walks only the objects of sockets and requests (gc.freeze).
    gc.freeze()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info("stopping")
    stalls.stop()
    await gateway.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ilianaai-avatar", description=__doc__.split("\n")[0])
    parser.add_argument("--env-file", default=".env", help="dotenv file to read settings from (default: .env)")
    parser.add_argument("--sandbox", action="store_true",
                        help="run everything on loopback: emulated HeyGen, LiveAvatar and Petya, a local MongoDB, "
                             "and the demo console (no accounts needed)")
    args = parser.parse_args(argv)
    if args.sandbox:
        return run_in_sandbox(args.env_file)
    try:
        settings = load_settings(dotenv_path=args.env_file)
    except ConfigError as exc:
        print(f"ilianaai-avatar: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if settings.event_loop == "uvloop":
        import uvloop
        return uvloop.run(serve(settings))
    return asyncio.run(serve(settings))


def run_in_sandbox(env_file: str) -> int:
    """The sandbox (sandbox/run.py), from a checkout with the `sandbox` extra installed. Its settings are read as
    production's are (the environment, then `env_file`), on top of the sandbox's own defaults, less the ones that name
    its own parts (sandbox/run.py)."""
    try:
        from sandbox.run import main as sandbox_main
    except ImportError as exc:
        if (exc.name or "").split(".")[0] == "sandbox":
            print("ilianaai-avatar: the sandbox runs from a checkout of the repository: `make run` there",
                  file=sys.stderr)
        else:
            print(f"ilianaai-avatar: the sandbox needs its extra ({(exc.name or '').split('.')[0]} is not installed): "
                  "pip install -e '.[sandbox]' in the checkout, or `make run`", file=sys.stderr)
        return 2
    return int(sandbox_main(env_file))


if __name__ == "__main__":
    sys.exit(main())
