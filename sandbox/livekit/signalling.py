"""The signalling endpoints: the WebSocket on `/rtc` (livekit-client, two peer connections) and `/rtc/v1` (the Python
SDK, its JoinRequest in the query, one peer connection), and `/rtc/validate`."""
import base64
import gzip

import tornado.web
import tornado.websocket
from google.protobuf import json_format
from livekit.protocol import models, rtc

from .client import ClientParticipant, leave_request, write
from .limits import RoomFull, log, spawn
from .tokens import TokenArguments, TokenError


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
            raise tornado.web.HTTPError(401, reason="Unauthorized", log_message=str(exc)) from None
        except Exception:
            raise tornado.web.HTTPError(400, reason="Bad join_request") from None
        room = self.server.room(self.claims.video.room, create=False)
        if (room is None and len(self.server.rooms) >= self.server.max_rooms) or \
                (room is not None and len(room.participants) >= self.server.max_participants \
                and self.claims.identity not in room.participants):
            raise tornado.web.HTTPError(429, reason="Room full")
        await super().get(*args, **kwargs)

    async def open(self, *args, **kwargs):
        self.set_nodelay(True)
        if self.get_query_argument("reconnect", "") == "1" or (self.join_request and self.join_request.reconnect):
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
            spawn(participant.leave(models.DisconnectReason.CLIENT_INITIATED))
