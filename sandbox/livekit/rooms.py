"""Rooms and their participants: joining and leaving, ParticipantUpdates to the others, the routing of data packets,
and the participants the sandbox plays itself (ServerParticipant; clients are ClientParticipant, in client.py)."""
import asyncio
import time

from livekit.protocol import models, rtc

from .limits import RoomFull, log, new_sid, spawn
from .tracks import PublishedTrack, TrackRelay, track_info

RELIABLE = models.DataPacket.Kind.RELIABLE
LOSSY = models.DataPacket.Kind.LOSSY
CHANNEL_KINDS = {"_reliable": RELIABLE, "_lossy": LOSSY}  # data channel label -> kind of the packets on it


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
        spawn(call_hook(self.on_data, ReceivedData(copy, kind)))

    async def close(self, reason):
        for track in self.tracks:
            if track.source is not None:
                track.source.stop()
