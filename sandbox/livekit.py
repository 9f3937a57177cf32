"""A LiveKit-compatible room server for loopback use: the rooms the sandbox's emulators put their avatars in.

Built on tornado (signalling WebSocket), aiortc (WebRTC) and livekit-protocol (the protobuf messages); access tokens
are LiveKit JWTs under the server's API key and secret (livekit-api mints and verifies them). Its URL is
`ws://127.0.0.1:<port>`, never a `*.livekit.cloud` name (livekit-client would fetch region settings for those).

It serves the two real clients (what they send was read from their source and checked, ../shared/upstream-apis.md §8):
- the browser's `livekit-client` (npm; what both official web SDKs use): `/rtc?access_token=…`, two peer connections.
  The join answer says `subscriber_primary`: the server offers the subscriber connection, with the data channels
  `_reliable` and `_lossy` it sends on and the server participants' tracks; the client offers its publisher
  connection when it first sends data or publishes, with its own `_reliable`/`_lossy` it sends on.
- the Python `livekit` rtc SDK (PyPI, Rust core): `/rtc/v1?join_request=<base64url WrappedJoinRequest>`, one peer
  connection the client offers inside the join request; data goes both ways on the client's own channels; for the
  server participants' tracks the server sends MediaSectionsRequirement, the client offers that many receive-only
  sections, and the answer puts the tracks on them (`mid_to_track_id` names their sids).

Implemented: rooms (made by the emulators, or on a client's first join and dropped when it empties); joining with a
verified token (room_join for that room; 401 on the handshake and on `/rtc/validate` otherwise; data from a token
without can_publish_data is dropped); a duplicate identity replaces the older participant (as LiveKit does);
ParticipantUpdate to the others on join and leave; data packets of
every kind (user packets with topics, chat, RPC, streams…) routed reliable or lossy, to everyone else or to
`destination_identities`, with the sender's identity and sid set by the server — from and to server-side participants
too; tracks published by server-side participants (aiortc MediaStreamTracks, VP8 video and Opus audio) sent to every
client, listed as TrackInfo and tied to their publication by the msid `<participant sid>|<track sid>` (and
`mid_to_track_id`), also when the publisher joins after the client (a new offer, or a new MediaSectionsRequirement);
a client's own published tracks are acknowledged (TrackPublishedResponse) and their media discarded; ping/pong (both
forms); leave either way (LeaveRequest to clients when a room closes); trickle ICE from clients.

Left out: forwarding clients' media to anyone, unpublishing a track without its participant leaving, simulcast,
layers and quality, adaptive stream, subscription control (everyone is subscribed to everything), speaker detection,
connection quality, resuming a session (a dropped signal socket is a leave; the join answer disables resume and a
resume attempt is told to reconnect, so the client joins anew as a new participant), metadata/attribute updates
from clients, room-service REST API, egress/ingress/SIP, end-to-end encryption, data tracks, TURN. Server-side ICE
uses aiortc's host candidates (no STUN), so peers must be on this machine.

Bounded: at most `max_rooms` rooms and `max_participants` per room (joins beyond answer 429 on the handshake); a
client whose first peer connection is not connected `JOIN_TIMEOUT` s after joining, or that is silent for
`PING_TIMEOUT` s, is dropped; signal messages are capped at `MAX_SIGNAL_MESSAGE`; data waiting for a channel to open
is capped at `MAX_PENDING_DATA` packets. A server track's frames are read once, whatever the number of clients
watching, and only while one is (TrackRelay: a slow peer skips frames, nothing queues); encoding runs in aiortc's
executor threads, not on the IOLoop.
"""
import asyncio
import base64
import datetime
import gzip
import json
import logging
import re
import secrets
import string
import time

import tornado.web
import tornado.websocket
from google.protobuf import json_format
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import candidate_from_sdp
from livekit import api
from livekit.protocol import models, rtc
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

log = logging.getLogger("sandbox.livekit")

DEFAULT_API_KEY = "sandbox-livekit-key"
PROTOCOL = 16  # the protocol version announced in ServerInfo (livekit-client 2.15 speaks 16)
SERVER_VERSION = "1.9.0-sandbox"
MAX_ROOMS = 50
MAX_PARTICIPANTS = 10  # per room, server-side participants included
JOIN_TIMEOUT = 20  # seconds from the join answer until the client's first peer connection must be connected
PING_INTERVAL = 5  # seconds, told to clients in the join answer
PING_TIMEOUT = 15  # seconds of client silence before it is dropped (also told to clients)
MAX_SIGNAL_MESSAGE = 1024 * 1024  # bytes
MAX_PENDING_DATA = 256  # packets queued per participant until its data channel opens
TOKEN_TTL = 3600  # seconds, default lifetime of the tokens `RoomServer.token` mints
LEAVE_GRACE = 0.2  # seconds between a LeaveRequest and closing the socket
SID_ALPHABET = string.ascii_letters + string.digits

RELIABLE = models.DataPacket.Kind.RELIABLE
LOSSY = models.DataPacket.Kind.LOSSY
CHANNEL_KINDS = {"_reliable": RELIABLE, "_lossy": LOSSY}


def new_sid(prefix):
    return prefix + "".join(secrets.choice(SID_ALPHABET) for _ in range(12))


def now_ms():
    return int(time.time() * 1000)


class RoomFull(Exception):
    """Too many rooms, or too many participants in a room."""


class TokenError(Exception):
    """A missing, invalid or insufficient access token."""


# --- the server -----------------------------------------------------------------------------------------------

class RoomServer:
    """The rooms, their access tokens and the signalling routes; one per sandbox."""

    def __init__(self, api_key=DEFAULT_API_KEY, api_secret=None, max_rooms=MAX_ROOMS,
                 max_participants=MAX_PARTICIPANTS):
        self.api_key = api_key
        self.api_secret = api_secret or secrets.token_urlsafe(32)
        self.max_rooms = max_rooms
        self.max_participants = max_participants
        self.rooms = {}  # name -> Room
        self.url = None  # ws://host:port once listening (or set by whoever serves make_app())
        self._verifier = api.TokenVerifier(self.api_key, self.api_secret)
        self._http = None

    def token(self, room, identity, name="", metadata="", ttl=TOKEN_TTL, can_publish=True, can_subscribe=True,
              can_publish_data=True, attributes=None):
        """A LiveKit access token (JWT) to join `room` as `identity`."""
        grants = api.VideoGrants(room_join=True, room=room, can_publish=can_publish, can_subscribe=can_subscribe,
                                 can_publish_data=can_publish_data)
        token = (api.AccessToken(self.api_key, self.api_secret).with_identity(identity).with_name(name)
                 .with_metadata(metadata).with_ttl(datetime.timedelta(seconds=ttl)).with_grants(grants))
        if attributes:
            token = token.with_attributes(attributes)
        return token.to_jwt()

    def verify(self, token):
        """The claims of a token that may join a room; TokenError otherwise."""
        if not token:
            raise TokenError("no access token")
        try:
            claims = self._verifier.verify(token)
        except Exception as exc:  # jwt's errors, and malformed grants
            raise TokenError(f"invalid access token: {exc}") from None
        if not claims.video.room_join or not claims.video.room or not claims.identity:
            raise TokenError("the token grants no room join (room_join, room and identity are needed)")
        return claims

    def room(self, name, create=True):
        """The room called `name`, made when absent (unless `create` is false: None). RoomFull over `max_rooms`."""
        room = self.rooms.get(name)
        if room is None and create:
            if len(self.rooms) >= self.max_rooms:
                raise RoomFull(f"at most {self.max_rooms} rooms")
            room = self.rooms[name] = Room(self, name)
        return room

    def routes(self):
        """The signalling routes, to mount on a tornado Application at its root."""
        return [
            (r"/rtc", SignalHandler, {"server": self, "single_pc": False}),
            (r"/rtc/v1", SignalHandler, {"server": self, "single_pc": True}),
            (r"/rtc/validate", ValidateHandler, {"server": self}),
            (r"/rtc/v1/validate", ValidateHandler, {"server": self}),
        ]

    def make_app(self):
        return tornado.web.Application(self.routes(), websocket_max_message_size=MAX_SIGNAL_MESSAGE,
                                       log_function=log_request)

    def listen(self, host="127.0.0.1", port=0):
        """Serve on a loopback port of its own; sets `url`."""
        sockets = bind_sockets(port, host)
        self._http = HTTPServer(self.make_app())
        self._http.add_sockets(sockets)
        self.url = f"ws://{host}:{sockets[0].getsockname()[1]}"
        return self

    async def close(self):
        for room in list(self.rooms.values()):
            await room.close()
        if self._http:
            self._http.stop()
            await self._http.close_all_connections()
            self._http = None


# --- rooms and participants -----------------------------------------------------------------------------------

class Room:
    """A room: its participants, and the routing of data between them.

    Hooks, set by the room's owner (plain functions or coroutine functions): `on_participant_joined(participant)`
    once a participant is in the room, `on_participant_left(participant)` once it has left.
    """

    def __init__(self, server, name, auto_close=False):
        self.server = server
        self.name = name
        self.sid = new_sid("RM_")
        self.created_at = time.time()
        self.auto_close = auto_close  # made by a client's join: dropped when it empties
        self.participants = {}  # identity -> Participant
        self.metadata = ""
        self.closed = False
        self.on_participant_joined = None
        self.on_participant_left = None
        self.relay = TrackRelay()
        self._changed = asyncio.Event()

    def info(self):
        return models.Room(sid=self.sid, name=self.name, creation_time=int(self.created_at),
                           creation_time_ms=int(self.created_at * 1000), num_participants=len(self.participants),
                           num_publishers=sum(1 for p in self.participants.values() if p.tracks),
                           max_participants=self.server.max_participants, metadata=self.metadata,
                           empty_timeout=300, departure_timeout=20)

    def others(self, participant):
        return [p for p in self.participants.values() if p is not participant]

    async def add_server_participant(self, identity, name="", metadata="", tracks=(), on_data=None,
                                     kind=models.ParticipantInfo.Kind.STANDARD, attributes=None):
        """A participant played by the sandbox itself (an emulator's avatar or agent), publishing `tracks`
        (aiortc MediaStreamTracks; a video track may carry `width`/`height`). `on_data(received)` gets each
        DataPacket sent to it, as a `ReceivedData`."""
        participant = ServerParticipant(self, identity, name, metadata, tracks, on_data, kind, attributes)
        await self.join(participant)
        return participant

    async def join(self, participant):
        if self.closed:
            raise RoomFull(f"room {self.name} is closed")
        previous = self.participants.get(participant.identity)
        if previous is not None:
            await previous.leave(models.DisconnectReason.DUPLICATE_IDENTITY)
        if len(self.participants) >= self.server.max_participants:
            raise RoomFull(f"at most {self.server.max_participants} participants in room {self.name}")
        self.participants[participant.identity] = participant
        participant.state = models.ParticipantInfo.State.JOINED
        self.broadcast_update(participant)
        for other in self.others(participant):
            await other.on_tracks_added(participant)
        self._notify()
        await call_hook(self.on_participant_joined, participant)

    async def remove(self, participant):
        """Called once by Participant.leave."""
        if self.participants.get(participant.identity) is not participant:
            return
        del self.participants[participant.identity]
        participant.state = models.ParticipantInfo.State.DISCONNECTED
        self.broadcast_update(participant)
        self._notify()
        await call_hook(self.on_participant_left, participant)
        if self.auto_close and not self.participants:
            await self.close()

    def broadcast_update(self, participant):
        update = rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[participant.info()]))
        for other in self.others(participant):
            other.signal(update)

    def route(self, sender, packet, kind):
        """Deliver a DataPacket from `sender` to everyone else, or to its destination identities."""
        packet.participant_identity = sender.identity
        packet.participant_sid = sender.sid
        packet.kind = kind
        destinations = set(packet.destination_identities)
        if packet.HasField("user"):
            packet.user.participant_identity = sender.identity
            packet.user.participant_sid = sender.sid
            destinations |= set(packet.user.destination_identities)
        for target in self.others(sender):
            if not destinations or target.identity in destinations:
                target.deliver(packet, kind)

    async def wait_for(self, predicate, timeout=10):
        """Wait until predicate(room) is true (checked on every join and leave); TimeoutError otherwise."""
        async def wait():
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(wait(), timeout)

    def _notify(self):
        self._changed.set()

    async def close(self):
        """Every participant leaves (clients get LeaveRequest ROOM_DELETED); the room is forgotten."""
        if self.closed:
            return
        self.closed = True
        for participant in list(self.participants.values()):
            await participant.leave(models.DisconnectReason.ROOM_DELETED)
        await self.relay.close()
        if self.server.rooms.get(self.name) is self:
            del self.server.rooms[self.name]


async def call_hook(hook, *args):
    if hook is None:
        return
    try:
        result = hook(*args)
        if asyncio.iscoroutine(result):
            await result
    except Exception:
        log.exception("room hook %r failed", hook)


class ReceivedData:
    """A data packet as a server participant's `on_data` gets it."""

    def __init__(self, packet, kind):
        self.packet = packet  # the whole livekit.protocol.models.DataPacket (RPC, streams, chat… are in it)
        self.identity = packet.participant_identity  # the sender
        self.reliable = kind == RELIABLE
        user = packet.user if packet.HasField("user") else None
        self.payload = user.payload if user else None  # bytes of a user packet (publishData), else None
        self.topic = user.topic if user and user.HasField("topic") else None

    def __repr__(self):
        return f"ReceivedData(identity={self.identity!r}, topic={self.topic!r}, payload={self.payload!r})"


class Participant:
    def __init__(self, room, identity, name="", metadata="", kind=models.ParticipantInfo.Kind.STANDARD,
                 attributes=None):
        self.room = room
        self.identity = identity
        self.name = name
        self.metadata = metadata
        self.kind = kind
        self.attributes = dict(attributes or {})
        self.sid = new_sid("PA_")
        self.joined_at = time.time()
        self.state = models.ParticipantInfo.State.JOINING
        self.tracks = []  # PublishedTrack
        self.left = False
        self.version = 0

    def info(self):
        self.version += 1
        return models.ParticipantInfo(
            sid=self.sid, identity=self.identity, name=self.name, metadata=self.metadata, state=self.state,
            tracks=[track.info for track in self.tracks], joined_at=int(self.joined_at),
            joined_at_ms=int(self.joined_at * 1000), version=self.version, is_publisher=bool(self.tracks),
            kind=self.kind, attributes=self.attributes,
            permission=models.ParticipantPermission(can_subscribe=True, can_publish=True, can_publish_data=True))

    def signal(self, response):
        """Send a SignalResponse (clients only)."""

    def deliver(self, packet, kind):
        raise NotImplementedError

    async def on_tracks_added(self, publisher):
        """`publisher` joined or published tracks: clients that receive media renegotiate."""

    async def leave(self, reason=models.DisconnectReason.CLIENT_INITIATED):
        if self.left:
            return
        self.left = True
        await self.room.remove(self)
        await self.close(reason)

    async def close(self, reason):
        pass


class TrackRelay:
    """Fans a source track out to many peer connections: one reader per source, running only while a subscriber
    is live; each subscriber gets the latest frame (a slow one skips frames, nothing queues). aiortc's MediaRelay
    keeps reading a source after its last consumer has gone."""

    def __init__(self):
        self._subscribers = {}  # source -> set of RelayedTrack
        self._readers = {}  # source -> Task

    def subscribe(self, source):
        return RelayedTrack(self, source)

    async def close(self):
        readers = list(self._readers.values())
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    def _start(self, proxy):
        subscribers = self._subscribers.setdefault(proxy.source, set())
        subscribers.add(proxy)
        if proxy.source not in self._readers:
            self._readers[proxy.source] = asyncio.ensure_future(self._read(proxy.source, subscribers))

    def _stop(self, proxy):
        self._subscribers.get(proxy.source, set()).discard(proxy)

    async def _read(self, source, subscribers):
        try:
            while subscribers:
                try:
                    frame = await source.recv()
                except MediaStreamError:
                    frame = None
                for proxy in list(subscribers):
                    proxy.push(frame)
                if frame is None:
                    break
        finally:
            self._readers.pop(source, None)
            if not subscribers:
                self._subscribers.pop(source, None)


class RelayedTrack(MediaStreamTrack):
    def __init__(self, relay, source):
        super().__init__()
        self.kind = source.kind
        self.relay, self.source = relay, source
        self._frame = None
        self._fresh = asyncio.Event()

    def push(self, frame):
        self._frame = frame
        self._fresh.set()

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        self.relay._start(self)
        await self._fresh.wait()
        self._fresh.clear()
        if self._frame is None:
            self.stop()
            raise MediaStreamError
        return self._frame

    def stop(self):
        super().stop()
        self.relay._stop(self)


class PublishedTrack:
    """A track in a participant's list: its TrackInfo, and the aiortc source when the server sends its media."""

    def __init__(self, info, source=None):
        self.info = info
        self.source = source


def track_info(track, index):
    video = track.kind == "video"
    return models.TrackInfo(
        sid=new_sid("TR_"), name=getattr(track, "name", None) or ("video" if video else "audio"),
        type=models.TrackType.VIDEO if video else models.TrackType.AUDIO,
        source=models.TrackSource.CAMERA if video else models.TrackSource.MICROPHONE,
        mime_type="video/VP8" if video else "audio/opus",
        width=getattr(track, "width", 0) if video else 0, height=getattr(track, "height", 0) if video else 0,
        mid=str(index))


class ServerParticipant(Participant):
    """A participant played by the sandbox: publishes tracks and data, hears data through `on_data`."""

    def __init__(self, room, identity, name, metadata, tracks, on_data, kind, attributes):
        super().__init__(room, identity, name, metadata, kind, attributes)
        self.on_data = on_data
        self.tracks = [PublishedTrack(track_info(track, i), track) for i, track in enumerate(tracks)]
        self.state = models.ParticipantInfo.State.ACTIVE
        self._sequence = 0

    def publish_data(self, payload, topic=None, reliable=True, destination_identities=None):
        """Send `payload` (bytes or str) as a user data packet to the room's other participants (or only to
        `destination_identities`); fire and forget, as LiveKit's publishData."""
        if self.left:
            raise RuntimeError(f"{self.identity} has left the room")
        if isinstance(payload, str):
            payload = payload.encode()
        kind = RELIABLE if reliable else LOSSY
        user = models.UserPacket(payload=payload, destination_identities=destination_identities or [])
        if topic is not None:
            user.topic = topic
        packet = models.DataPacket(user=user, destination_identities=destination_identities or [])
        if reliable:
            self._sequence += 1
            packet.sequence = self._sequence
        self.room.route(self, packet, kind)

    def deliver(self, packet, kind):
        copy = models.DataPacket()
        copy.CopyFrom(packet)
        asyncio.ensure_future(call_hook(self.on_data, ReceivedData(copy, kind)))

    async def close(self, reason):
        for track in self.tracks:
            if track.source is not None:
                track.source.stop()


# --- clients ---------------------------------------------------------------------------------------------------

MSID = re.compile(r"msid:(\S+) (\S+)")


class ClientParticipant(Participant):
    """A participant on a signalling socket: livekit-client (two peer connections, the server offers the
    subscriber one) or the Rust SDK (one peer connection, offered by the client in its join request)."""

    def __init__(self, room, handler, claims, single_pc):
        super().__init__(room, claims.identity, claims.name or "", claims.metadata or "",
                         attributes=claims.attributes)
        self.handler = handler
        self.single_pc = single_pc
        self.can_publish_data = claims.video.can_publish_data
        self.publisher = None  # the peer connection the client offers (its only one in single-PC mode)
        self.subscriber = None  # the peer connection the server offers (two-PC mode)
        self.send_channels = {}  # label -> RTCDataChannel the server sends on
        self.pending = {RELIABLE: [], LOSSY: []}  # packets waiting for their channel to open
        self.media_sids = {}  # aiortc track id in our SDP -> (participant sid, track sid)
        self.sent_tracks = set()  # track sids already on the subscriber connection
        self.blackholes = []
        self.last_heard = time.monotonic()
        self.connected = asyncio.Event()
        self._offer_id = 0
        self._negotiating = asyncio.Lock()
        self._answered = None  # Future for the client's answer to the server's offer
        self._early_candidates = {rtc.SignalTarget.PUBLISHER: [], rtc.SignalTarget.SUBSCRIBER: []}
        self._watchdog = None
        self._negotiation = None
        self._sections_asked = False  # single-PC mode: a MediaSectionsRequirement awaits the client's offer

    # signalling

    def signal(self, response):
        if self.handler is not None:
            write(self.handler, response)

    async def start(self, join_request=None):
        """Answer the join, then set up the peer connection(s)."""
        self.signal(rtc.SignalResponse(join=rtc.JoinResponse(
            room=self.room.info(), participant=self.info(),
            other_participants=[p.info() for p in self.room.others(self)],
            server_version=SERVER_VERSION, subscriber_primary=not self.single_pc,
            ping_timeout=PING_TIMEOUT, ping_interval=PING_INTERVAL,
            # no resume: a client whose signal socket dropped joins anew (its old self has left)
            client_configuration=models.ClientConfiguration(resume_connection=models.ClientConfigSetting.DISABLED),
            server_info=models.ServerInfo(edition=models.ServerInfo.Edition.Standard, version=SERVER_VERSION,
                                          protocol=PROTOCOL, node_id="sandbox"))))
        self._watchdog = asyncio.ensure_future(self._watch())
        if self.single_pc:
            if join_request is not None and join_request.HasField("publisher_offer"):
                await self.answer(join_request.publisher_offer)
        else:
            self.subscriber = self._peer_connection(primary=True)
            self.send_channels = {
                "_reliable": self.subscriber.createDataChannel("_reliable", ordered=True),
                "_lossy": self.subscriber.createDataChannel("_lossy", ordered=False, maxRetransmits=0),
            }
            for channel in self.send_channels.values():
                self._watch_channel(channel)
            # in the background: the answer comes as a signal message, read only once open() has returned
            self._negotiation = asyncio.ensure_future(self.offer_subscriber())

    async def handle(self, request):
        self.last_heard = time.monotonic()
        which = request.WhichOneof("message")
        if which == "offer":
            await self.answer(request.offer)
        elif which == "answer":
            if self.subscriber is not None and self._answered is not None and not self._answered.done():
                await self.subscriber.setRemoteDescription(RTCSessionDescription(request.answer.sdp, "answer"))
                await self._flush_candidates(rtc.SignalTarget.SUBSCRIBER)
                self._answered.set_result(True)
        elif which == "trickle":
            await self.add_candidate(request.trickle)
        elif which == "ping_req":
            self.signal(rtc.SignalResponse(pong_resp=rtc.Pong(last_ping_timestamp=request.ping_req.timestamp,
                                                              timestamp=now_ms())))
        elif which == "ping":
            self.signal(rtc.SignalResponse(pong=now_ms()))
        elif which == "add_track":
            self.publish_client_track(request.add_track)
        elif which == "leave":
            await self.leave(models.DisconnectReason.CLIENT_INITIATED)
        # subscription, track_setting, update_layers, subscription_permission, sync_state, update_metadata,
        # mute, simulate…: accepted and ignored (see the module docstring)

    def publish_client_track(self, request):
        """Acknowledge a track the client publishes; its media is received and dropped."""
        info = models.TrackInfo(sid=new_sid("TR_"), name=request.name, type=request.type, source=request.source,
                                width=request.width, height=request.height, muted=request.muted,
                                stream=request.stream)
        self.tracks.append(PublishedTrack(info))
        self.signal(rtc.SignalResponse(track_published=rtc.TrackPublishedResponse(cid=request.cid, track=info)))
        self.room.broadcast_update(self)

    # peer connections

    def _peer_connection(self, primary):
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN: loopback only

        @pc.on("connectionstatechange")
        async def on_state():
            if pc.connectionState == "connected" and primary:
                self.state = models.ParticipantInfo.State.ACTIVE
                self.connected.set()
            elif pc.connectionState == "failed" and not self.left:
                log.info("%s: peer connection failed", self.identity)
                await self.leave(models.DisconnectReason.MEDIA_FAILURE)

        @pc.on("datachannel")
        def on_channel(channel):
            self._watch_channel(channel)
            if self.single_pc and channel.label in CHANNEL_KINDS:
                self.send_channels[channel.label] = channel  # the Rust SDK hears on its own channels
                self._flush_pending()  # announced open: no "open" event follows

        @pc.on("track")
        def on_track(track):
            blackhole = MediaBlackhole()  # never forwarded; drained so aiortc's queues stay empty
            blackhole.addTrack(track)
            self.blackholes.append(blackhole)
            asyncio.ensure_future(blackhole.start())

        return pc

    def _watch_channel(self, channel):
        kind = CHANNEL_KINDS.get(channel.label)

        @channel.on("message")
        def on_message(message):
            if kind is None or not isinstance(message, bytes) or not self.can_publish_data:
                return
            packet = models.DataPacket()
            try:
                packet.ParseFromString(message)
            except Exception:
                log.info("%s: undecodable data packet dropped", self.identity)
                return
            self.room.route(self, packet, kind)

        @channel.on("open")
        def on_open():
            self._flush_pending()

    async def answer(self, offer):
        """Answer the client's offer for its publisher connection (its only one in single-PC mode, where the server
        tracks go on the receive-only sections the client added when asked by MediaSectionsRequirement)."""
        if self.publisher is None:
            self.publisher = self._peer_connection(primary=self.single_pc)
        await self.publisher.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
        if self.single_pc:
            self._attach_server_tracks()
        await self.publisher.setLocalDescription(await self.publisher.createAnswer())
        await self._flush_candidates(rtc.SignalTarget.PUBLISHER)
        self.signal(rtc.SignalResponse(answer=rtc.SessionDescription(
            type="answer", sdp=self._rewrite_msid(self.publisher.localDescription.sdp), id=offer.id,
            mid_to_track_id=self._mid_to_track_id(self.publisher))))
        if self.single_pc:
            self._ask_for_media_sections()

    def _unsent_tracks(self):
        return [(participant, track) for participant in self.room.others(self) for track in participant.tracks
                if track.source is not None and track.info.sid not in self.sent_tracks]

    def _ask_for_media_sections(self):
        """Single-PC mode: ask the client for one receive-only section per server track it does not get yet."""
        kinds = [track.source.kind for _, track in self._unsent_tracks()]
        if kinds and not self._sections_asked:
            self._sections_asked = True
            self.signal(rtc.SignalResponse(media_sections_requirement=rtc.MediaSectionsRequirement(
                num_audios=kinds.count("audio"), num_videos=kinds.count("video"))))

    def _attach_server_tracks(self):
        free = [t for t in self.publisher.getTransceivers()
                if t.receiver.track is None and t.sender.track is None and not t.stopped]
        for participant, track in self._unsent_tracks():
            transceiver = next((t for t in free if t.kind == track.source.kind), None)
            if transceiver is None:
                continue
            free.remove(transceiver)
            self._send_on(transceiver, participant, track)
        self._sections_asked = False

    def _send_on(self, transceiver, participant, track):
        """Put a server track on a transceiver, with the sids its msid will carry."""
        proxy = self.room.relay.subscribe(track.source)
        transceiver.direction = "sendonly"
        transceiver.sender.replaceTrack(proxy)
        self.media_sids[proxy.id] = (participant.sid, track.info.sid)
        self.sent_tracks.add(track.info.sid)

    async def offer_subscriber(self):
        """(Re)offer the subscriber connection with every server participant's tracks not yet on it."""
        async with self._negotiating:
            if self.subscriber is None or self.left or self._offer_id and not self._unsent_tracks():
                return  # (a renegotiation asked for twice: the first one sent everything)
            for participant, track in self._unsent_tracks():
                transceiver = self.subscriber.addTransceiver(track.source.kind, direction="sendonly")
                if track.source.kind == "video":
                    transceiver.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                                                     if c.mimeType.lower() in ("video/vp8", "video/rtx")])
                self._send_on(transceiver, participant, track)
            await self.subscriber.setLocalDescription(await self.subscriber.createOffer())
            self._offer_id += 1
            self._answered = asyncio.get_running_loop().create_future()
            self.signal(rtc.SignalResponse(offer=rtc.SessionDescription(
                type="offer", sdp=self._rewrite_msid(self.subscriber.localDescription.sdp), id=self._offer_id,
                mid_to_track_id=self._mid_to_track_id(self.subscriber))))
            try:
                await asyncio.wait_for(asyncio.shield(self._answered), JOIN_TIMEOUT)
            except asyncio.TimeoutError:
                log.info("%s: no answer to the subscriber offer", self.identity)

    def _mid_to_track_id(self, pc):
        """The track sid sent on each mid (the Rust SDK finds publications by it)."""
        return {t.mid: self.media_sids[t.sender.track.id][1] for t in pc.getTransceivers()
                if t.mid is not None and t.sender.track is not None and t.sender.track.id in self.media_sids}

    def _rewrite_msid(self, sdp):
        """aiortc's `msid:<its stream> <track id>` becomes `msid:<participant sid>|<track sid> <track sid>`:
        livekit-client finds the publisher and the publication by splitting the stream id on `|`."""
        def replace(match):
            sids = self.media_sids.get(match.group(2))
            return f"msid:{sids[0]}|{sids[1]} {sids[1]}" if sids else match.group(0)
        return MSID.sub(replace, sdp)

    async def on_tracks_added(self, publisher):
        if not self._unsent_tracks():
            return
        if self.subscriber is not None:
            self._negotiation = asyncio.ensure_future(self.offer_subscriber())
        elif self.single_pc and self.publisher is not None:
            self._ask_for_media_sections()

    async def add_candidate(self, trickle):
        pc = self.subscriber if trickle.target == rtc.SignalTarget.SUBSCRIBER else self.publisher
        try:
            init = json.loads(trickle.candidateInit)
        except ValueError:
            return
        text = (init.get("candidate") or "").removeprefix("candidate:")
        if not text:
            return  # end of candidates: aiortc goes on with what it has
        try:
            candidate = candidate_from_sdp(text)
        except (AssertionError, ValueError, IndexError):
            return
        candidate.sdpMid = init.get("sdpMid")
        candidate.sdpMLineIndex = init.get("sdpMLineIndex")
        if pc is None or pc.remoteDescription is None:
            self._early_candidates[trickle.target].append(candidate)
            return
        await self._add(pc, candidate)

    async def _flush_candidates(self, target):
        pc = self.subscriber if target == rtc.SignalTarget.SUBSCRIBER else self.publisher
        waiting, self._early_candidates[target] = self._early_candidates[target], []
        for candidate in waiting:
            await self._add(pc, candidate)

    async def _add(self, pc, candidate):
        try:
            await pc.addIceCandidate(candidate)
        except Exception as exc:  # a candidate aiortc cannot use (TCP, an unknown mid): skip it
            log.debug("%s: candidate skipped: %s", self.identity, exc)

    # data

    def deliver(self, packet, kind):
        pending = self.pending[kind]
        pending.append(packet.SerializeToString())
        if len(pending) > MAX_PENDING_DATA:
            del pending[0]
            log.info("%s: data channel not open, oldest packet dropped", self.identity)
        self._flush_pending()

    def _flush_pending(self):
        for kind, pending in self.pending.items():
            channel = self.send_channels.get("_reliable" if kind == RELIABLE else "_lossy")
            while pending and channel is not None and channel.readyState == "open":
                channel.send(pending.pop(0))

    # lifetime

    async def _watch(self):
        """Drop a client whose connection never comes up, or that has gone silent."""
        try:
            await asyncio.wait_for(self.connected.wait(), JOIN_TIMEOUT)
        except asyncio.TimeoutError:
            log.info("%s: no peer connection within %ss", self.identity, JOIN_TIMEOUT)
            await self.leave(models.DisconnectReason.CONNECTION_TIMEOUT)
            return
        while not self.left:
            await asyncio.sleep(PING_INTERVAL)
            if time.monotonic() - self.last_heard > PING_TIMEOUT:
                log.info("%s: silent for %ss", self.identity, PING_TIMEOUT)
                await self.leave(models.DisconnectReason.SIGNAL_CLOSE)
                return

    async def close(self, reason):
        handler, self.handler = self.handler, None
        if handler is not None and reason != models.DisconnectReason.CLIENT_INITIATED:
            write(handler, leave_request(reason))
            await asyncio.sleep(LEAVE_GRACE)
        if handler is not None:
            handler.close(1000)
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
        if self._answered is not None and not self._answered.done():
            self._answered.cancel()
        for blackhole in self.blackholes:
            await blackhole.stop()
        for pc in (self.subscriber, self.publisher):
            if pc is not None:
                await pc.close()


# --- signalling -------------------------------------------------------------------------------------------------

def log_request(handler):
    """Access lines without the query: it holds the access token (and the Rust SDK's whole join request)."""
    request = handler.request
    log.info("%d %s %s (%s) %.2fms", handler.get_status(), request.method, request.path, request.remote_ip,
             1000 * request.request_time())


def write(handler, response):
    """Send a SignalResponse; a socket closed meanwhile is not an error here (on_close makes it a leave)."""
    try:
        future = handler.write_message(response.SerializeToString(), binary=True)
    except tornado.websocket.WebSocketClosedError:
        return
    future.add_done_callback(lambda done: done.exception())


def leave_request(reason):
    return rtc.SignalResponse(leave=rtc.LeaveRequest(reason=reason, action=rtc.LeaveRequest.Action.DISCONNECT))


def read_join_request(argument):
    """The JoinRequest in `/rtc/v1?join_request=`: base64url of a WrappedJoinRequest, gzip when it says so."""
    raw = base64.urlsafe_b64decode(argument + "=" * (-len(argument) % 4))
    wrapped = rtc.WrappedJoinRequest()
    wrapped.ParseFromString(raw)
    body = wrapped.join_request
    if wrapped.compression == rtc.WrappedJoinRequest.Compression.GZIP:
        body = gzip.decompress(body)
    request = rtc.JoinRequest()
    request.ParseFromString(body)
    return request


class TokenArguments:
    """What both signalling handlers and the validate endpoint read from a request."""

    def access_token(self):
        auth = self.request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return self.get_query_argument("access_token", "")


class ValidateHandler(TokenArguments, tornado.web.RequestHandler):
    """`/rtc/validate`: livekit-client asks it why a signalling socket failed; 401 with the reason, or 200."""

    def initialize(self, server):
        self.server = server

    def get(self):
        self.set_header("Access-Control-Allow-Origin", "*")
        try:
            claims = self.server.verify(self.access_token())
        except TokenError as exc:
            self.set_status(401)
            self.finish(str(exc))
            return
        room = self.server.room(claims.video.room, create=False)
        if room is not None and len(room.participants) >= self.server.max_participants:
            self.set_status(429)
            self.finish("room is full")
            return
        self.finish("success")


class SignalHandler(TokenArguments, tornado.websocket.WebSocketHandler):
    """One participant's signalling socket: binary SignalRequest in, binary SignalResponse out."""

    def initialize(self, server, single_pc):
        self.server = server
        self.single_pc = single_pc
        self.participant = None
        self.claims = None
        self.join_request = None

    def check_origin(self, origin):
        return True  # pages of any origin join (the sandbox is loopback only; the token is the credential)

    async def get(self, *args, **kwargs):
        try:
            self.claims = self.server.verify(self.access_token())
            if self.single_pc:
                self.join_request = read_join_request(self.get_query_argument("join_request", ""))
        except TokenError as exc:
            raise tornado.web.HTTPError(401, reason="Unauthorized", log_message=str(exc))
        except Exception:
            raise tornado.web.HTTPError(400, reason="Bad join_request")
        room = self.server.room(self.claims.video.room, create=False)
        if room is None and len(self.server.rooms) >= self.server.max_rooms or \
                room is not None and len(room.participants) >= self.server.max_participants \
                and self.claims.identity not in room.participants:
            raise tornado.web.HTTPError(429, reason="Room full")
        await super().get(*args, **kwargs)

    async def open(self, *args, **kwargs):
        self.set_nodelay(True)
        if self.get_query_argument("reconnect", "") == "1" or self.join_request and self.join_request.reconnect:
            # a resume: its participant left when its socket closed; told to reconnect, it joins anew
            write(self, rtc.SignalResponse(leave=rtc.LeaveRequest(
                reason=models.DisconnectReason.STATE_MISMATCH, action=rtc.LeaveRequest.Action.RECONNECT)))
            self.close(1000)
            return
        room = self.server.room(self.claims.video.room, create=False)
        try:
            if room is None:
                room = self.server.room(self.claims.video.room)
                room.auto_close = True
            participant = ClientParticipant(room, self, self.claims, self.single_pc)
            await room.join(participant)
        except RoomFull as exc:
            write(self, leave_request(models.DisconnectReason.JOIN_FAILURE))
            log.info("join refused: %s", exc)
            self.close(1000)
            return
        self.participant = participant
        try:
            await participant.start(self.join_request)
        except Exception:
            log.exception("%s: join failed", participant.identity)
            await participant.leave(models.DisconnectReason.JOIN_FAILURE)

    async def on_message(self, message):
        if self.participant is None or self.participant.left:
            return
        request = rtc.SignalRequest()
        try:
            if isinstance(message, bytes):
                request.ParseFromString(message)
            else:
                json_format.Parse(message, request, ignore_unknown_fields=True)
        except Exception:
            log.info("%s: undecodable signal message dropped", self.participant.identity)
            return
        await self.participant.handle(request)

    def on_close(self):
        participant, self.participant = self.participant, None
        if participant is not None and not participant.left:
            participant.handler = None
            asyncio.ensure_future(participant.leave(models.DisconnectReason.CLIENT_INITIATED))
