"""The whole world on loopback: the HeyGen and LiveAvatar emulators, the Petya reference (with a demo customer)
and the gateway, configured exactly as in production but pointed at the emulators. Tests and `--sandbox` use it.
"""
import secrets
from urllib.parse import urlsplit, urlunsplit

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from conf import load_settings
from handlers.app import Gateway  # the gateway knows nothing of the sandbox; the sandbox builds it as server.py does
from sandbox.heygen import HeyGenEmulator
from sandbox.liveavatar import DEFAULT_AVATAR_ID as LIVEAVATAR_DEMO_AVATAR
from sandbox.liveavatar import LiveAvatarEmulator
from sandbox.livekit import RoomServer
from sandbox.petya import PetyaReference

DEMO_API_KEY = "demo-customer-key"


def with_database(uri, name):
    """`uri` with its database path set to `name`."""
    parts = urlsplit(uri)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


class ServedApp:
    """A tornado app on a loopback port that can be stopped and served again on the same port."""

    def __init__(self, app, host="127.0.0.1", port=0):
        self.app, self.host, self.port = app, host, port
        self.server = None

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    def start(self):
        sockets = bind_sockets(self.port, self.host)
        self.port = sockets[0].getsockname()[1]
        self.server = HTTPServer(self.app)
        self.server.add_sockets(sockets)
        return self

    async def stop(self):
        if self.server:
            self.server.stop()
            await self.server.close_all_connections()
            self.server = None


class Sandbox:
    def __init__(self, mongodb_uri, database="ilianaai_sandbox", host="127.0.0.1", gateway_port=0,
                 demo_api_key=DEMO_API_KEY, petya_mongodb_uri=None, rooms=True, **settings):
        """rooms=False: no LiveKit room server (the emulators answer as they do standalone), for tests of the
        gateway's HTTP surface that need no rooms (the fuzzers' threaded sandbox)."""
        self.mongodb_uri = mongodb_uri
        self.database = database
        self.host = host
        self.gateway_port = gateway_port
        self.demo_api_key = demo_api_key
        self.overrides = settings  # setting name (any case) -> raw string value
        self.rooms = RoomServer(api_key="sandbox-livekit-key") if rooms else None  # both providers' rooms
        self.heygen = HeyGenEmulator(rooms=self.rooms)
        self.liveavatar = LiveAvatarEmulator(rooms=self.rooms)
        self.petya = PetyaReference(with_database(petya_mongodb_uri or mongodb_uri, database + "_petya"),
                                    database + "_petya")
        self.served = {}
        self.gateway = None
        self.settings = None
        self.env = None  # the gateway's settings as environment variables, fixed at start

    def environment(self):
        """The gateway's settings, as a production deployment would set them, pointed at the emulators."""
        env = {
            "HOST": self.host,
            "PORT": str(self.gateway_port),
            "GATEWAY_SECRET": secrets.token_hex(16),
            "HEYGEN_API_KEY": self.heygen.api_key,
            "HEYGEN_BASE_URL": self.served["heygen"].url,
            "LIVEAVATAR_API_KEY": self.liveavatar.api_key,
            "LIVEAVATAR_BASE_URL": self.served["liveavatar"].url,
            "PETYA_BASE_URL": self.served["petya"].url,
            "PETYA_AUTH_TOKEN": self.petya.service_token,
            "MONGODB_URI": with_database(self.mongodb_uri, self.database),
        }
        env.update({name.upper(): str(value) for name, value in self.overrides.items()})
        return env

    async def start(self):
        self.start_upstreams()
        self.gateway = await Gateway.build(self.settings).start()
        return self

    def start_upstreams(self):
        """Everything but the gateway: the emulators and the Petya reference (with the demo customer), and the
        gateway's settings (`env`, `settings`) for starting gateways in this process or as processes of their own."""
        if self.rooms is not None and self.rooms.url is None:
            self.rooms.listen(host=self.host, port=0)
        self.served["heygen"] = ServedApp(self.heygen.make_app(), self.host).start()
        self.served["liveavatar"] = ServedApp(self.liveavatar.make_app(), self.host).start()
        self.served["petya"] = ServedApp(self.petya.make_app(), self.host).start()
        if self.demo_api_key and self.petya.config_for_key(self.demo_api_key) is None:
            # LiveAvatar's avatar ids differ from HeyGen's: the demo customer has both.
            self.petya.create_account(self.demo_api_key, name="Demo customer",
                                      liveAvatar={"avatarId": LIVEAVATAR_DEMO_AVATAR})
        self.env = self.environment()
        self.settings = load_settings(environ=self.env, dotenv_path=None)
        return self

    @property
    def gateway_url(self):
        return f"http://{self.host}:{self.gateway.port}"

    async def restart_gateway(self, **changes):
        """Stop the gateway and start a new one on the same port and database (a process restart)."""
        changes.setdefault("port", self.gateway.port)
        await self.gateway.stop()
        self.gateway = await Gateway.build(self.settings.replace(**changes)).start()
        return self.gateway

    async def stop(self):
        if self.gateway:
            await self.gateway.stop()
        for served in self.served.values():
            await served.stop()
        self.heygen.stop()
        self.liveavatar.stop()
        if self.rooms is not None:
            await self.rooms.close()
        self.petya.close()
