"""What the tests share, imported as `tests.helpers.<module>` (conftest.py holds only the fixtures): `client`, the
plugin's HTTP client (GatewayClient, Reply), the sandbox's FAST timings and `eventually`; `flows`, the plugin flows
several modules run (a HeyGen session opened and its socket connected, the avatar's words awaited or injected, a
LiveAvatar session minted, the JSON error shape); `frames`, RFC 6455 frames built by the book; `rooms`, LiveKit rooms
through the Python SDK (`until`, LiveAvatarRoom); `browser`, the pinned SDK bundle, nginx with TLS, Chromium's flags
and the pages' tabs; `cdp`, the small Chrome DevTools Protocol driver; `processes`, gateways (and nginx) as real
processes; `threaded`, a sandbox on a background thread for synchronous clients; `store`, a gateway's MongoDB
workers held by calls that block them (HeldWorkers)."""
