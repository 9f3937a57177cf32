"""What the room server announces and enforces (versions, bounds, timings), and what all its modules share: the
logger, the sids it hands out, RoomFull."""
import asyncio
import logging
import secrets
import string

log = logging.getLogger("sandbox.livekit")

PROTOCOL = 16  # the protocol version announced in ServerInfo (livekit-client 2.15 speaks 16)
SERVER_VERSION = "1.9.0-sandbox"
MAX_ROOMS = 50
MAX_PARTICIPANTS = 10  # per room, server-side participants included
JOIN_TIMEOUT = 20  # seconds from the join answer until the client's first peer connection must be connected
PING_INTERVAL = 5  # seconds, told to clients in the join answer
PING_TIMEOUT = 15  # seconds of client silence before it is dropped (also told to clients)
MAX_SIGNAL_MESSAGE = 1024 * 1024  # bytes
MAX_PENDING_DATA = 256  # packets queued per participant until its data channel opens
LEAVE_GRACE = 0.2  # seconds between a LeaveRequest and closing the socket
SID_ALPHABET = string.ascii_letters + string.digits


def new_sid(prefix):
    return prefix + "".join(secrets.choice(SID_ALPHABET) for _ in range(12))


class RoomFull(Exception):
    """Too many rooms, or too many participants in a room."""


_running = set()  # tasks spawned and not yet done: held so they are not collected mid-way


def spawn(coroutine):
    """Run `coroutine` in the background, holding the task until it is done."""
    task = asyncio.ensure_future(coroutine)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task
