"""The streaming-chat WebSocket relay (browser <-> gateway <-> HeyGen): its handler (`handler.py`), the two pumps
that move frames once both legs are open — the fast one on sockets taken from tornado (`pump.py`, through
clients/tornado_compat.py) and the plain one on tornado's public API (`plain.py`) — the frame and protobuf codecs
(`frames.py`, `pipecat.py`), the words a socket carries (`transcript.py`) and the registry of open relays
(`registry.py`)."""
