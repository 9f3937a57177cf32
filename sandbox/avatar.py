"""A synthetic avatar for the sandbox's rooms: a drawn face whose mouth moves while it speaks, with the words being
spoken written under it (VP8 video), and a soft tone while it speaks (Opus audio). While it is quiet the audio track
sends nothing: its 50 packets a second would cost a watched room more than its video does.

    avatar = Avatar()
    participant = await avatar.join(room)            # identity "heygen", as both services name it
    await avatar.speak("Hello there")                # returns when the last word has been said
    avatar.is_speaking; avatar.interrupt()

Cheap by construction: a picture is drawn (Pillow) only for a state not seen lately — the mouth's opening (four
steps), the caption — and kept as a YUV array; each tick only copies one into a new frame. Frames are made only
while a client receives them (sandbox/livekit/tracks.py's TrackRelay), and pacing follows the wall clock: a pause skips
ahead, it never bursts.
"""
import asyncio
import collections
import fractions
import math
import re
import textwrap
import time

import av
import numpy
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 320, 240
FPS = 15
SECONDS_PER_WORD = 0.35  # ~170 words per minute
MOUTH_HZ = 4  # syllables per second, roughly
MOUTH_STEPS = 4
CAPTION_CHARS = 34  # per line
PICTURES_KEPT = MOUTH_STEPS * 2  # drawn pictures reused while the caption stays (a word's mouth movements)
CAPTION_LINES = 3
SAMPLE_RATE = 48000
AUDIO_PTIME = 0.02  # seconds per audio frame
TONE_HZ = 220
TONE_LEVEL = 0.04  # of full scale: soft
VIDEO_CLOCK = 90000
SKIN, HAIR, BACKGROUND, INK = (236, 196, 160), (70, 45, 30), (38, 70, 110), (30, 20, 20)


class Avatar:
    """What the avatar shows and says; its `video` and `audio` tracks read it."""

    def __init__(self, name="Sandbox avatar", width=WIDTH, height=HEIGHT, fps=FPS,
                 seconds_per_word=SECONDS_PER_WORD):
        self.name = name
        self.seconds_per_word = seconds_per_word
        self.caption = ""  # the words said so far of the current speech
        self.speaking_since = None  # monotonic time the current speech began, None when quiet
        self.video = AvatarVideoTrack(self, width, height, fps)
        self.audio = AvatarAudioTrack(self)
        self._turn = asyncio.Lock()  # one speech at a time, in call order
        self.voice = asyncio.Event()  # set while speaking: the audio track sends only then
        self._current = None

    @property
    def tracks(self):
        return [self.video, self.audio]

    @property
    def is_speaking(self):
        return self.speaking_since is not None

    async def join(self, room, identity="heygen", name="", metadata="", on_data=None, **kwargs):
        """Enter `room` (a sandbox.livekit.Room) as a server participant publishing this avatar's tracks. One room per
        avatar: a room's relay is the only reader of its tracks."""
        return await room.add_server_participant(identity, name=name, metadata=metadata, tracks=self.tracks,
                                                 on_data=on_data, **kwargs)

    def duration(self, text):
        return len(text.split()) * self.seconds_per_word

    async def speak(self, text, on_word=None):
        """Say `text`, a word every `seconds_per_word` (after any speech already under way); `on_word(index, word)`
        is called as each word begins. Returns True when said to the end, False when interrupted."""
        async with self._turn:
            words = re.findall(r"\S+", text)
            self._current = asyncio.current_task()
            self.caption, self.speaking_since = "", time.monotonic()
            self.voice.set()
            try:
                for index, word in enumerate(words):
                    self.caption = (self.caption + " " + word).strip()
                    if on_word is not None:
                        on_word(index, word)
                    await asyncio.sleep(self.seconds_per_word)
                return True
            except asyncio.CancelledError:
                if self._current is None:  # interrupt(), not a cancellation from outside
                    asyncio.current_task().uncancel()
                    return False
                raise
            finally:
                self._current = None
                self.speaking_since = None
                self.voice.clear()

    def interrupt(self):
        """Stop the speech under way (its speak() returns False); later ones still run."""
        task, self._current = self._current, None
        if task is not None:
            task.cancel()

    def mouth(self):
        """How open the mouth is now: 0 (closed) … MOUTH_STEPS - 1."""
        if self.speaking_since is None:
            return 0
        phase = (time.monotonic() - self.speaking_since) * MOUTH_HZ
        return 1 + int(abs(math.sin(math.pi * phase)) * (MOUTH_STEPS - 1.01))

    def loudness(self):
        return self.mouth() / (MOUTH_STEPS - 1)


class Pacer:
    """Timestamps on the wall clock at a fixed rate; after a pause (nobody watching) it skips ahead."""

    def __init__(self, period, clock_rate):
        self.period, self.clock_rate = period, clock_rate
        self.start = None
        self.tick = -1

    async def next(self):
        now = time.monotonic()
        if self.start is None:
            self.start = now
        due = self.start + (self.tick + 1) * self.period
        if due < now - self.period:  # behind (a pause): skip to now
            self.tick = int((now - self.start) / self.period)
        else:
            self.tick += 1
            await asyncio.sleep(max(0.0, due - now))
        return int(self.tick * self.period * self.clock_rate)


class AvatarVideoTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, avatar, width, height, fps):
        super().__init__()
        self.avatar, self.width, self.height = avatar, width, height
        self.name = "avatar-video"
        self._pacer = Pacer(1 / fps, VIDEO_CLOCK)
        self._time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self._font = ImageFont.load_default(size=max(10, height // 17))
        self._title_font = ImageFont.load_default(size=max(9, height // 20))
        self._drawn = collections.OrderedDict()  # (mouth, caption, speaking) -> yuv420p array, the latest few

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        pts = await self._pacer.next()
        what = (self.avatar.mouth(), self.avatar.caption, self.avatar.is_speaking)
        picture = self._drawn.get(what)
        if picture is None:
            picture = self._drawn[what] = self.draw(*what)
            if len(self._drawn) > PICTURES_KEPT:
                self._drawn.popitem(last=False)
        frame = av.VideoFrame.from_ndarray(picture, format="yuv420p")
        frame.pts, frame.time_base = pts, self._time_base
        return frame

    def draw(self, mouth, caption, speaking):
        """The picture for one state, as a yuv420p array."""
        w, h = self.width, self.height
        image = Image.new("RGB", (w, h), BACKGROUND)
        d = ImageDraw.Draw(image)
        cx, cy, r = w // 2, int(h * 0.36), int(h * 0.24)
        d.ellipse((cx - r - 4, cy - r - 8, cx + r + 4, cy + r // 3), fill=HAIR)  # hair
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=SKIN)  # face
        for ex in (cx - r // 2.6, cx + r // 2.6):  # eyes
            d.ellipse((ex - r // 9, cy - r // 4, ex + r // 9, cy - r // 4 + r // 5), fill=INK)
        mouth_w, mouth_h = r // 2.2, 2 + mouth * r // 7
        top = cy + r // 2.5
        d.rounded_rectangle((cx - mouth_w // 2, top, cx + mouth_w // 2, top + mouth_h), radius=min(6, mouth_h // 2),
                            fill=(150, 40, 50) if mouth else INK)
        d.text((6, 4), self.avatar.name + (" · speaking" if speaking else ""), fill=(220, 230, 240),
               font=self._title_font)
        lines = textwrap.wrap(caption, CAPTION_CHARS)[-CAPTION_LINES:]
        line_h = self._font.size + 3
        base = h - 6 - line_h * CAPTION_LINES
        d.rectangle((0, base - 4, w, h), fill=(15, 25, 40))
        for i, line in enumerate(lines):
            d.text((8, base + i * line_h), line, fill=(255, 255, 255), font=self._font)
        return av.VideoFrame.from_image(image).reformat(format="yuv420p").to_ndarray()


class AvatarAudioTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, avatar):
        super().__init__()
        self.avatar = avatar
        self.name = "avatar-audio"
        self._samples = int(SAMPLE_RATE * AUDIO_PTIME)
        self._pacer = Pacer(AUDIO_PTIME, SAMPLE_RATE)
        self._time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._silence = numpy.zeros((1, self._samples), dtype=numpy.int16)
        self._phase = numpy.arange(self._samples) * (2 * math.pi * TONE_HZ / SAMPLE_RATE)

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        await self.avatar.voice.wait()  # no packets while quiet: Opus frames are most of a room's cost
        pts = await self._pacer.next()
        level = self.avatar.loudness()
        if level:
            start = 2 * math.pi * TONE_HZ * pts / SAMPLE_RATE
            wave = numpy.sin(self._phase + start) * (TONE_LEVEL * level * 32767)
            samples = wave.astype(numpy.int16).reshape(1, -1)
        else:
            samples = self._silence
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, pts, self._time_base
        return frame
