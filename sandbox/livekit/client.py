"""A participant on a signalling socket (ClientParticipant): the join answer for either dialect, the SignalRequests it
sends, the data packets it gets, and its lifetime (join and ping timeouts, leaving). Its peer connections are in
peers.py."""
import asyncio
import time

import tornado.websocket
from livekit.protocol import models, rtc

from .limits import (
    JOIN_TIMEOUT,
    LEAVE_GRACE,
    MAX_PENDING_DATA,
    PING_INTERVAL,
    PING_TIMEOUT,
    PROTOCOL,
    SERVER_VERSION,
    log,
    new_sid,
)
from .peers import PeerConnections
from .rooms import LOSSY, RELIABLE, Participant
from .tracks import PublishedTrack


def now_ms():
    return int(time.time() * 1000)


def write(handler, response):
    """Send a SignalResponse; a socket closed meanwhile is not an error here (on_close makes it a leave)."""
    try:
        future = handler.write_message(response.SerializeToString(), binary=True)
    except tornado.websocket.WebSocketClosedError:
        return
    future.add_done_callback(lambda done: done.exception())


def leave_request(reason):
    return rtc.SignalResponse(leave=rtc.LeaveRequest(reason=reason, action=rtc.LeaveRequest.Action.DISCONNECT))


class ClientParticipant(PeerConnections, Participant):
    """A participant on a signalling socket: livekit-client (two peer connections, the server offers the
    subscriber one) or the Rust SDK (one peer connection, offered by the client in its join request)."""

    def __init__(self, room, handler, claims, single_pc):
        super().__init__(room, claims.identity, claims.name or "", claims.metadata or "",
                         attributes=claims.attributes)
        self.handler = handler
        self.single_pc = single_pc
        room.server.clients.add(self)
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
            await self.take_answer(request.answer)
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
        # mute, simulate…: accepted and ignored (see the package docstring)

    def publish_client_track(self, request):
        """Acknowledge a track the client publishes; its media is received and dropped."""
        info = models.TrackInfo(sid=new_sid("TR_"), name=request.name, type=request.type, source=request.source,
                                width=request.width, height=request.height, muted=request.muted,
                                stream=request.stream)
        self.tracks.append(PublishedTrack(info))
        self.signal(rtc.SignalResponse(track_published=rtc.TrackPublishedResponse(cid=request.cid, track=info)))
        self.room.broadcast_update(self)

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
        except TimeoutError:
            log.info("%s: no peer connection within %ss", self.identity, JOIN_TIMEOUT)
            await self.leave(models.DisconnectReason.CONNECTION_TIMEOUT)
            return
        while not self.left and not self.room.closed:
            await asyncio.sleep(PING_INTERVAL)
            if time.monotonic() - self.last_heard > PING_TIMEOUT:
                log.info("%s: silent for %ss", self.identity, PING_TIMEOUT)
                await self.leave(models.DisconnectReason.SIGNAL_CLOSE)
                return

    async def close(self, reason):
        self.room.server.clients.discard(self)
        # Its tasks first, awaited: nothing of it may be left pending should the loop close during the grace below.
        current = asyncio.current_task()
        pending = [task for task in (self._watchdog, self._negotiation) if task is not None and task is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        handler, self.handler = self.handler, None
        if handler is not None and reason != models.DisconnectReason.CLIENT_INITIATED:
            write(handler, leave_request(reason))
            await asyncio.sleep(LEAVE_GRACE)
        if handler is not None:
            handler.close(1000)
        await self._close_peers()
