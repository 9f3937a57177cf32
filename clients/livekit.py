"""A data-only LiveKit participant: how the gateway's room agent sits in a provider's room (services/rooms.py).

It joins as the Python `livekit` rtc SDK does (docs/upstream.md#livekit-signalling): one WebSocket to
`<url>/rtc/v1?join_request=…`, whose JoinRequest carries the offer of the participant's only peer connection, with
the two data channels `_reliable` and `_lossy` on it; data goes both ways on those channels as LiveKit DataPackets.
It never subscribes to media (`auto_subscribe` off; a server that still asks for media sections is not answered), so a
room costs one WebRTC connection carrying a few small packets: measured against the `livekit` SDK in
`bench/suite/rooms.py` (docs/upstream.md#server-side-participant-cost).

Bounded: the join (signalling, the answer and the data channel opening) within `join_timeout`; signal messages at
MAX_SIGNAL_MESSAGE; a server silent for its announced ping timeout counts as gone; packets published before the
channel opened are refused (publish answers False), never queued. Whatever ends the participant — a LeaveRequest, the
socket or the peer connection dropping, a ping timeout, `leave()` — calls `on_disconnected(reason)` once.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from livekit.protocol import models, rtc
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, websocket_connect

log = logging.getLogger("gateway.rooms")

PROTOCOL = 16  # the signalling protocol spoken (livekit-client 2.15's; the Python SDK 1.2 speaks more, compatibly)
SDK_VERSION = "ilianaai-avatar-agent/1"
MAX_SIGNAL_MESSAGE = 1024 * 1024  # bytes
DEFAULT_PING_INTERVAL = 10.0  # seconds, until the join answer names the server's
DEFAULT_PING_TIMEOUT = 30.0
RELIABLE = models.DataPacket.Kind.RELIABLE


class RoomJoinError(Exception):
    """The room could not be joined: refused (a bad token, a full room), unreachable, or not within the bound."""


@dataclass(frozen=True, slots=True)
class RoomData:
    """A user data packet heard in the room."""
    sender: str  # the identity of the participant that published it ("" when the server sent it)
    topic: str | None
    payload: bytes


def rtc_url(url: str, join_request: bytes) -> str:
    """The signalling URL for a room URL (`wss://…` or `https://…`, any path prefix kept). The access token travels
    in the Authorization header, which LiveKit reads first: a query would put it in every server's access log."""
    parts = urlsplit(url)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    query = urlencode({"auto_subscribe": "0", "sdk": "python", "protocol": PROTOCOL,
                       "join_request": base64.urlsafe_b64encode(join_request).decode().rstrip("=")})
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/rtc/v1", query, ""))


class DataParticipant:
    """One room, joined with an access token, publishing and hearing data only."""

    __slots__ = ("_channels", "_closing", "_pinger", "_reader", "_sequence", "identity", "last_heard", "leave_reason",
                 "on_data", "on_disconnected", "participants", "pc", "ping_interval", "ping_timeout", "room_name",
                 "signal", "token", "url")

    def __init__(self, url: str, token: str, on_data: Callable[[RoomData], None],
                 on_disconnected: Callable[[str], None]) -> None:
        self.url = url
        self.token = token
        self.on_data = on_data
        self.on_disconnected = on_disconnected
        self.identity = ""  # ours, as the join answer names it
        self.room_name = ""
        self.participants: dict[str, str] = {}  # identity -> sid, the others in the room
        self.pc: RTCPeerConnection | None = None
        self.signal: WebSocketClientConnection | None = None
        self.ping_interval = DEFAULT_PING_INTERVAL
        self.ping_timeout = DEFAULT_PING_TIMEOUT
        self.last_heard = time.monotonic()
        self._channels: dict[str, RTCDataChannel] = {}
        self._sequence = 0
        self._reader: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._closing: str | None = None  # why it ended, once it has
        self.leave_reason: int | None = None  # the server's DisconnectReason, when it asked us to leave

    @property
    def connected(self) -> bool:
        channel = self._channels.get("_reliable")
        return self._closing is None and channel is not None and channel.readyState == "open"

    async def join(self, timeout: float) -> None:
        """Join the room and wait until data can flow both ways; RoomJoinError (everything closed) otherwise."""
        try:
            await asyncio.wait_for(self._join(timeout), timeout)
        except RoomJoinError as exc:
            await self._close(f"join failed: {exc}", notify=False)
            raise
        except TimeoutError:
            await self._close("join timed out", notify=False)
            raise RoomJoinError(f"not in the room within {timeout:g}s") from None
        except asyncio.CancelledError:  # the gateway stopping: nothing of it may stay open
            await asyncio.shield(self._close("join cancelled", notify=False))
            raise
        except Exception as exc:
            await self._close("join failed", notify=False)
            raise RoomJoinError(f"join failed: {type(exc).__name__}") from None

    async def _join(self, timeout: float) -> None:
        pc = self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        reliable = pc.createDataChannel("_reliable", ordered=True)
        lossy = pc.createDataChannel("_lossy", ordered=False, maxRetransmits=0)
        opened = asyncio.get_running_loop().create_future()
        for channel in (reliable, lossy):
            self._channels[channel.label] = channel
            channel.on("message", self._heard)
        reliable.on("open", lambda: None if opened.done() else opened.set_result(True))
        pc.on("connectionstatechange", self._connection_state)
        await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers its candidates here: no trickle
        join = rtc.JoinRequest(
            client_info=models.ClientInfo(sdk=models.ClientInfo.SDK.PYTHON, version=SDK_VERSION, protocol=PROTOCOL),
            connection_settings=rtc.ConnectionSettings(auto_subscribe=False),
            publisher_offer=rtc.SessionDescription(type="offer", sdp=pc.localDescription.sdp, id=1))
        wrapped = rtc.WrappedJoinRequest(join_request=join.SerializeToString())
        request = HTTPRequest(rtc_url(self.url, wrapped.SerializeToString()),
                              headers={"Authorization": f"Bearer {self.token}"},
                              connect_timeout=timeout, request_timeout=timeout)
        try:
            self.signal = await websocket_connect(request, max_message_size=MAX_SIGNAL_MESSAGE)
        except HTTPClientError as exc:
            raise RoomJoinError(f"the room server refused the agent ({exc.code})") from None
        except OSError as exc:
            raise RoomJoinError(f"the room server is unreachable ({type(exc).__name__})") from None
        answered = asyncio.get_running_loop().create_future()
        self._reader = asyncio.ensure_future(self._read(answered))
        await answered  # the join and the answer to our offer (RoomJoinError when refused)
        await opened
        self._pinger = asyncio.ensure_future(self._ping())

    # --- signalling ---------------------------------------------------------------------------------------------

    async def _read(self, answered: asyncio.Future[bool]) -> None:
        reason = "signal connection closed"
        try:
            while self.signal is not None:
                message = await self.signal.read_message()
                if message is None:
                    break
                if isinstance(message, str):
                    continue
                response = rtc.SignalResponse()
                try:
                    response.ParseFromString(message)
                except Exception:  # protobuf's DecodeError: a message of a newer protocol, or garbage
                    continue
                self.last_heard = time.monotonic()
                left = await self._handle(response, answered)
                if left is not None:
                    reason = left
                    break
        except Exception as exc:  # the peer connection refusing the answer, and the like
            reason = f"signalling failed: {type(exc).__name__}"
        if not answered.done():
            answered.set_exception(RoomJoinError(reason))
            return
        await self._close(reason)

    async def _handle(self, response: rtc.SignalResponse, answered: asyncio.Future[bool]) -> str | None:
        """Act on one SignalResponse; the reason to stop when it tells us to leave."""
        which = response.WhichOneof("message")
        if which == "join":
            join = response.join
            self.identity, self.room_name = join.participant.identity, join.room.name
            self.participants = {p.identity: p.sid for p in join.other_participants}
            if join.ping_interval:
                self.ping_interval = float(join.ping_interval)
            if join.ping_timeout:
                self.ping_timeout = float(join.ping_timeout)
        elif which == "answer" and self.pc is not None:
            await self.pc.setRemoteDescription(RTCSessionDescription(response.answer.sdp, "answer"))
            if not answered.done():
                answered.set_result(True)
        elif which == "update":
            for info in response.update.participants:
                if info.state == models.ParticipantInfo.State.DISCONNECTED:
                    self.participants.pop(info.identity, None)
                elif info.identity != self.identity:
                    self.participants[info.identity] = info.sid
        elif which == "leave":
            self.leave_reason = response.leave.reason
            return f"the room server asked the agent to leave ({response.leave.reason})"
        # offers (none in single-PC mode), media section requirements (no media wanted), trickle (aiortc
        # answers with every candidate in its SDP and needs none of the server's beyond its answer), pongs: nothing
        return None

    def _send(self, request: rtc.SignalRequest) -> None:
        if self.signal is None:
            return
        try:
            future = self.signal.write_message(request.SerializeToString(), binary=True)
        except WebSocketClosedError:
            return
        future.add_done_callback(lambda done: done.exception())

    async def _ping(self) -> None:
        while self._closing is None:
            await asyncio.sleep(self.ping_interval)
            if time.monotonic() - self.last_heard > self.ping_timeout:
                await self._close("the room server went silent")
                return
            now = int(time.time() * 1000)
            self._send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=now)))

    # --- data -----------------------------------------------------------------------------------------------

    def _heard(self, message: Any) -> None:
        if not isinstance(message, bytes):
            return
        packet = models.DataPacket()
        try:
            packet.ParseFromString(message)
        except Exception:
            return
        if not packet.HasField("user"):
            return  # chat, RPC, streams, transcription packets: not what the agent reads
        user = packet.user
        sender = packet.participant_identity or user.participant_identity
        topic = user.topic if user.HasField("topic") else None
        try:
            self.on_data(RoomData(sender, topic, user.payload))
        except Exception:
            log.exception("room data handler failed")

    def publish(self, payload: bytes, topic: str | None = None, destinations: tuple[str, ...] = ()) -> bool:
        """Publish a reliable user packet to the room (or only to `destinations`); False when not in the room."""
        channel = self._channels.get("_reliable")
        if not self.connected or channel is None:
            return False
        user = models.UserPacket(payload=payload, destination_identities=list(destinations))
        if topic is not None:
            user.topic = topic
        self._sequence += 1
        packet = models.DataPacket(kind=RELIABLE, user=user, destination_identities=list(destinations),
                                   participant_identity=self.identity, sequence=self._sequence)
        channel.send(packet.SerializeToString())
        return True

    # --- leaving ------------------------------------------------------------------------------------------------

    async def _connection_state(self) -> None:
        if self.pc is not None and self.pc.connectionState in ("failed", "closed") and self._closing is None:
            await self._close(f"peer connection {self.pc.connectionState}")

    async def leave(self) -> None:
        """Leave the room (telling the server), and close everything."""
        if self._closing is None:
            self._send(rtc.SignalRequest(leave=rtc.LeaveRequest(reason=models.DisconnectReason.CLIENT_INITIATED,
                                                                action=rtc.LeaveRequest.Action.DISCONNECT)))
        await self._close("left", notify=False)

    async def _close(self, reason: str, notify: bool = True) -> None:
        if self._closing is not None:
            return
        self._closing = reason
        current = asyncio.current_task()
        for task in (self._pinger, self._reader):
            if task is not None and task is not current:
                task.cancel()
        signal, self.signal = self.signal, None
        if signal is not None:
            signal.close(1000)
        pc, self.pc = self.pc, None
        self._channels.clear()
        if pc is not None:
            try:
                await pc.close()
            except Exception:
                log.debug("peer connection close failed", exc_info=True)
        if notify:
            try:
                self.on_disconnected(reason)
            except Exception:
                log.exception("room disconnect handler failed")
