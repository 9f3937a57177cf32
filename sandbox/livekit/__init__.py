"""A LiveKit-compatible room server for loopback use: the rooms the sandbox's emulators put their avatars in.

Built on tornado (signalling WebSocket), aiortc (WebRTC) and livekit-protocol (the protobuf messages); access tokens
are LiveKit JWTs under the server's API key and secret (livekit-api mints and verifies them). Its URL is
`ws://127.0.0.1:<port>`, never a `*.livekit.cloud` name (livekit-client would fetch region settings for those).

It serves the two real clients (what they send was read from their source and checked,
docs/upstream.md#livekit-signalling):
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

Modules:
- server: RoomServer, one per sandbox: its rooms, access tokens and signalling routes
- tokens: minting and verifying access tokens, reading them from a request
- signalling: the WebSocket endpoints `/rtc` and `/rtc/v1`, and `/rtc/validate`
- rooms: rooms, participants and the routing of data packets; the server-side participants
- client: a client participant: its join answer, signal messages, data and lifetime
- peers: a client's peer connections: offers and answers, the server tracks on them, ICE
- tracks: TrackInfos, and the relay of a server track's frames to the clients watching
- limits: versions, bounds and timings; sids
"""
from .client import ClientParticipant
from .limits import RoomFull
from .rooms import Participant, ReceivedData, Room, ServerParticipant
from .server import RoomServer
from .tokens import AccessTokens, TokenError
from .tracks import TrackRelay

__all__ = ["AccessTokens", "ClientParticipant", "Participant", "ReceivedData", "Room", "RoomFull", "RoomServer",
           "ServerParticipant", "TokenError", "TrackRelay"]
