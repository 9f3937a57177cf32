"""The room server: its rooms, its access tokens (AccessTokens) and its signalling routes, served on a loopback port
or mounted on another tornado Application."""
import tornado.web
from livekit.protocol import models
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from .limits import MAX_PARTICIPANTS, MAX_ROOMS, MAX_SIGNAL_MESSAGE, RoomFull, log
from .rooms import Room
from .signalling import SignalHandler, ValidateHandler
from .tokens import DEFAULT_API_KEY, AccessTokens


def log_request(handler):
    """Access lines without the query: it holds the access token (and the Rust SDK's whole join request)."""
    request = handler.request
    log.info("%d %s %s (%s) %.2fms", handler.get_status(), request.method, request.path, request.remote_ip,
             1000 * request.request_time())


class RoomServer(AccessTokens):
    """The rooms, their access tokens and the signalling routes; one per sandbox."""

    def __init__(self, api_key=DEFAULT_API_KEY, api_secret=None, max_rooms=MAX_ROOMS,
                 max_participants=MAX_PARTICIPANTS):
        super().__init__(api_key, api_secret)
        self.max_rooms = max_rooms
        self.max_participants = max_participants
        self.rooms = {}  # name -> Room
        self.clients = set()  # every ClientParticipant not closed yet, whatever room it is (or was) in
        self.url = None  # ws://host:port once listening (or set by whoever serves make_app())
        self._http = None

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
        for client in list(self.clients):  # left no room but not closed yet (a leave spawned, not yet run)
            await client.leave(models.DisconnectReason.ROOM_DELETED)
        if self._http:
            self._http.stop()
            await self._http.close_all_connections()
            self._http = None
