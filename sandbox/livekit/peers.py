"""A client's peer connections, the media side of ClientParticipant: offers and answers in both dialects, the server
participants' tracks put on transceivers (renegotiated when a publisher joins later), the msid and `mid_to_track_id`
that tie them to their publications, and trickle ICE."""
import asyncio
import json
import re

from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole
from aiortc.sdp import candidate_from_sdp
from livekit.protocol import models, rtc

from .limits import JOIN_TIMEOUT, log, spawn
from .rooms import CHANNEL_KINDS

MSID = re.compile(r"msid:(\S+) (\S+)")


class PeerConnections:
    """ClientParticipant's peer connection methods (a mixin: the state they use is set up in
    ClientParticipant.__init__)."""

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
            spawn(blackhole.start())

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

    async def take_answer(self, answer):
        """The client's answer to the server's subscriber offer (two-PC mode)."""
        if self.subscriber is not None and self._answered is not None and not self._answered.done():
            await self.subscriber.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))
            await self._flush_candidates(rtc.SignalTarget.SUBSCRIBER)
            self._answered.set_result(True)

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
            if self.subscriber is None or self.left or (self._offer_id and not self._unsent_tracks()):
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
            except TimeoutError:
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

    async def _close_peers(self):
        if self._answered is not None and not self._answered.done():
            self._answered.cancel()
        for blackhole in self.blackholes:
            await blackhole.stop()
        for pc in (self.subscriber, self.publisher):
            if pc is not None:
                await pc.close()
