"""Binary pipecat frames from HeyGen's web SDK: the words of speak() reach the transcript, audio passes unread.

The frames are the SDK's own. SDK_TEXT and SDK_AUDIO were produced once by running @heygen/streaming-avatar 2.1.0
under node with tests/pipecat_sdk/encode.mjs (speak() with its default talk + async, and the microphone callback
of its WebSocket voice chat); test_recorded_vectors_are_what_the_sdk_sends runs that script again, when node is
there, and checks the SDK still makes exactly these bytes.
"""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.pipecat import TEXT_TAG, text_of
from tests.helpers.client import eventually
from tests.helpers.flows import connected

SDK_DIR = Path(__file__).parent.parent / "pipecat_sdk"  # tests/pipecat_sdk

LONG = "I would like to know " + "more about your products " * 7 + "please."  # 203 bytes: two-byte lengths
SDK_TEXT = {  # words -> the frame speak({text: words}) sends
    "Hello": bytes.fromhex("0a071a0548656c6c6f"),
    "What are your opening hours?": bytes.fromhex(
        "0a1e1a1c576861742061726520796f7572206f70656e696e6720686f7572733f"),
    "Привет, мир! 🙂 ¿Qué tal?": bytes.fromhex(
        "0a281a26d09fd180d0b8d0b2d0b5d1822c20d0bcd0b8d1802120f09f998220c2bf5175c3a92074616c3f"),
    "": bytes.fromhex("0a021a00"),
    LONG: bytes.fromhex("0ace011acb01") + LONG.encode(),  # the SDK's header bytes, then the text as UTF-8
}
SHORT_SAMPLES = [0, 0.5, -0.5, 1, -1]
SDK_AUDIO = {  # microphone chunk -> the frame the voice chat sends
    "short": bytes.fromhex("12111a0a0000ff3f00c0ff7f008020807d2801"),  # SHORT_SAMPLES, 16 kHz mono
    # A muted 512-sample chunk (what the SDK sends while muted): 1 KiB of PCM zeros between the SDK's header bytes
    # and its sampleRate 16000 / numChannels 1 fields.
    "muted": bytes.fromhex("1288081a8008") + bytes(1024) + bytes.fromhex("20807d2801"),
}


def varint(n):
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def field(number, payload):
    """A length-delimited protobuf field, encoded here by hand (not with the module under test)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


# --- the SDK's own encoder -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sdk_encode():
    """encode(texts, samples) -> (text frames, audio frames), made by the SDK under node."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node/npm not installed: cannot run the SDK's own encoder (its recorded vectors are tested)")
    if not (SDK_DIR / "node_modules" / "@heygen" / "streaming-avatar").is_dir():
        installed = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=SDK_DIR,
                                   capture_output=True, text=True, timeout=300)
        if installed.returncode:
            pytest.skip(f"npm ci in {SDK_DIR} failed (offline?): {installed.stderr.strip()[-300:]}")

    def encode(texts, samples):
        run = subprocess.run([node, "encode.mjs"], cwd=SDK_DIR, input=json.dumps({"texts": texts, "samples": samples}),
                             capture_output=True, text=True, timeout=60, check=True)
        frames = json.loads(run.stdout)
        return [bytes.fromhex(h) for h in frames["text"]], [bytes.fromhex(h) for h in frames["audio"]]

    return encode


def test_recorded_vectors_are_what_the_sdk_sends(sdk_encode):
    text_frames, audio_frames = sdk_encode(list(SDK_TEXT), [SHORT_SAMPLES, [0.0] * 512])
    assert text_frames == list(SDK_TEXT.values())
    assert audio_frames == [SDK_AUDIO["short"], SDK_AUDIO["muted"]]


def test_sdk_frames_made_now_decode(sdk_encode):
    texts = ["Ok", "Zeilen\numbruch und \"Anführungszeichen\"", "日本語のテキスト", "x" * 5000]
    speech = [0.3 * ((i % 32) / 16 - 1) for i in range(512)]  # a real, non-silent 512-sample chunk
    text_frames, audio_frames = sdk_encode(texts, [speech])
    assert [text_of(frame) for frame in text_frames] == texts
    assert len(audio_frames[0]) > 1024 and text_of(audio_frames[0]) is None


# --- text_of -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("words", list(SDK_TEXT))
def test_text_frames_from_the_sdk_decode(words):
    assert text_of(SDK_TEXT[words]) == words


def test_text_frame_with_every_field_set_decodes():
    """As a pipecat server writes one (id and name set, fields in any order)."""
    text_frame = field(3, "¡Hola! 👋".encode()) + b"\x08\x2a" + field(2, b"TextFrame#42")
    assert text_of(field(1, text_frame)) == "¡Hola! 👋"


@pytest.mark.parametrize("name", list(SDK_AUDIO))
def test_audio_frames_are_not_text(name):
    assert text_of(SDK_AUDIO[name]) is None


def test_transcription_frames_are_not_text():
    transcription = field(3, b"I need help") + field(4, b"user-1") + field(5, b"2026-12-01T10:00:00Z")
    assert text_of(field(3, transcription)) is None


@pytest.mark.parametrize("frame", [
    b"",
    b"\x00",
    b"\xff" * 16,
    b"Hello",  # text, but not a frame
    b"\x0a",  # the text tag and nothing else
    b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a length varint that never ends well
    b"\x0a\x80",  # a length varint cut off
    field(1, field(3, b"\xff\xfe bad utf-8")),
    field(1, b"\x1a\x05Hel"),  # the inner text shorter than its length says
    field(1, b"\x0b"),  # a group start tag inside the TextFrame
    b"\x0a\x00" + b"\x0f",  # a stray invalid tag after an empty text field
], ids=repr)
def test_garbage_is_not_text(frame):
    assert text_of(frame) is None


@pytest.mark.parametrize("words", ["Hello", LONG])
def test_truncated_text_frames_are_not_text(words):
    frame = SDK_TEXT[words]
    assert [text_of(frame[:cut]) for cut in range(len(frame))] == [None] * len(frame)


def test_a_later_audio_field_wins_the_oneof():
    """Protobuf's rule for a oneof set twice: the last field read is the one set."""
    assert text_of(SDK_TEXT["Hello"] + SDK_AUDIO["short"]) is None


def test_only_the_text_tag_is_parsed(monkeypatch):
    import relay.pipecat as pipecat

    class Unparsable:
        @staticmethod
        def FromString(data):
            raise AssertionError(f"parsed {data[:8]!r}")

    monkeypatch.setattr(pipecat, "Frame", Unparsable)
    for frame in [*SDK_AUDIO.values(), *(bytes([first]) + SDK_TEXT["Hello"] for first in range(256) if first != 0x0A)]:
        assert text_of(frame) is None
    assert TEXT_TAG == 0x0A  # Frame.text is field 1, length-delimited


@settings(derandomize=True, database=None, max_examples=1000)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_string_or_none(data):
    for frame in (data, b"\x0a" + data):
        assert text_of(frame) is None or isinstance(text_of(frame), str)


# --- over real sockets: browser -> gateway -> HeyGen emulator, transcript -> Petya -------------------------------

async def transcript_turns(client, session_id):
    reply = await client.call(f"/v1/streaming.transcript?session_id={session_id}", method="GET")
    assert reply.status == 200, reply.json
    return [(t["role"], t["transcript"], t["sources"]) for t in reply.data["transcript"]]


async def delivered(sandbox, client, session_id):
    """Stop the session; the (role, text) turns Petya received."""
    assert (await client.call("/v1/streaming.stop", {"session_id": session_id})).status == 200
    await eventually(lambda: sandbox.petya.deliveries("conv-1"))
    return [(t["role"], t["transcript"]) for t in sandbox.petya.get_conversation("conv-1")["transcript"]]


@pytest.mark.parametrize("first", ["socket", "reported"])
@pytest.mark.gen_test(timeout=20)
async def test_speak_over_the_socket_reaches_heygen_unchanged_and_the_transcript_once(sandbox, client, first):
    session_id, _, ws = await connected(sandbox, client)
    words = "Привет, мир! 🙂 ¿Qué tal?"
    report = {"session_id": session_id, "text": words}
    if first == "reported":
        assert (await client.call("/v1/streaming.user_message", report)).data == {"recorded": True}
    await ws.write_message(SDK_TEXT[words], binary=True)
    received = sandbox.heygen.sessions[session_id].ws_received
    await eventually(lambda: received)
    assert received == [(True, SDK_TEXT[words])]  # the identical bytes, as a binary frame
    if first == "socket":
        await eventually(lambda: _has_turns(client, session_id))
        assert (await client.call("/v1/streaming.user_message", report)).data == {"recorded": False}
    await eventually(lambda: _has_turns(client, session_id, ["frame", "reported"]))
    assert await transcript_turns(client, session_id) == [("user", words, ["frame", "reported"])]
    assert await delivered(sandbox, client, session_id) == [("user", words)]
    ws.close()


async def _has_turns(client, session_id, sources=None):
    turns = await transcript_turns(client, session_id)
    return turns and (sources is None or turns[0][2] == sources)


@pytest.mark.gen_test(timeout=20)
async def test_socket_speech_keeps_its_place_among_tasks(sandbox, client):
    session_id, _, ws = await connected(sandbox, client)
    await client.call("/v1/streaming.task", {"session_id": session_id, "text": "Hi, I am Iliana.",
                                             "task_type": "repeat"})
    await eventually(lambda: _has_turns(client, session_id))
    await ws.write_message(SDK_TEXT["What are your opening hours?"], binary=True)
    await eventually(lambda: len(sandbox.heygen.sessions[session_id].ws_received) == 1)
    assert await delivered(sandbox, client, session_id) == [
        ("avatar", "Hi, I am Iliana."), ("user", "What are your opening hours?")]
    ws.close()


@pytest.mark.gen_test(timeout=20)
async def test_audio_and_other_frames_pass_byte_identical_and_record_nothing(sandbox, client):
    session_id, _, ws = await connected(sandbox, client)
    frames = [SDK_AUDIO["muted"], SDK_AUDIO["short"], *[SDK_AUDIO["muted"]] * 20,
              SDK_TEXT[""],  # a TextFrame without words
              field(1, field(3, b"   ")),  # only spaces
              b"\x0a\xff",  # looks like a text frame, is not one
              field(3, field(3, b"I need help")),  # a transcription frame
              os.urandom(2048),
              '{"type": "not recorded"}']  # a JSON text frame: relayed as ever
    for frame in frames:
        await ws.write_message(frame, binary=isinstance(frame, bytes))
    received = sandbox.heygen.sessions[session_id].ws_received
    await eventually(lambda: len(received) == len(frames))
    assert received == [(isinstance(frame, bytes), frame) for frame in frames]
    assert await delivered(sandbox, client, session_id) == []
    ws.close()
