"""Tracks: the TrackInfo of what a participant publishes, and the relay that fans a server track's frames out to the
clients watching it."""
import asyncio

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from livekit.protocol import models

from .limits import new_sid


class TrackRelay:
    """Fans a source track out to many peer connections: one reader per source, running only while a subscriber
    is live; each subscriber gets the latest frame (a slow one skips frames, nothing queues). aiortc's MediaRelay
    keeps reading a source after its last consumer has gone."""

    def __init__(self):
        self._subscribers = {}  # source -> set of RelayedTrack
        self._readers = {}  # source -> Task
        self.closed = False

    def subscribe(self, source):
        return RelayedTrack(self, source)

    async def close(self):
        self.closed = True  # no reader starts after this (a peer still sending would start one, left pending)
        readers = list(self._readers.values())
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    def _start(self, proxy):
        if self.closed:
            raise MediaStreamError
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
