"""What HeyGen's web SDK types into the streaming-chat socket: the text of a binary `pipecat.Frame`, if it is one.

Why: `@heygen/streaming-avatar` 2.1.0 sends its default `speak()` (task type talk, mode async) not as a REST task
but as a protobuf `pipecat.Frame` holding a TextFrame, on the same WebSocket as the microphone's audio frames
(docs/upstream.md#pipecat-frames). The relay reads those words so they reach the transcript; everything else it sends on
unread.

Schema source: the `pipecat.json` descriptor bundled in the npm package `@heygen/streaming-avatar@2.1.0`
(`lib/index.esm.js`, the `jsonDescriptor` the SDK loads with `protobuf.Root.fromJSON` and `lookupType("pipecat.Frame")`;
the same file as `src/pipecat.json` in HeyGen-Official/StreamingAvatarSDK). Proto3:

    message TextFrame          { uint64 id = 1; string name = 2; string text = 3; }
    message AudioRawFrame      { uint64 id = 1; string name = 2; bytes audio = 3; uint32 sampleRate = 4;
                                 uint32 numChannels = 5; }
    message TranscriptionFrame { uint64 id = 1; string name = 2; string text = 3; string userId = 4;
                                 string timestamp = 5; }
    message Frame { oneof frame { TextFrame text = 1; AudioRawFrame audio = 2; TranscriptionFrame transcription = 3; } }

The SDK encodes `speak()` as `Frame{text: {text}}` (bytes 0x0a <len> 0x1a <len> <utf-8 text>) and each microphone
chunk (512 samples of 16 kHz mono PCM16, zeros when muted) as `Frame{audio: {audio, sampleRate: 16000,
numChannels: 1}}` (bytes 0x12 <len> 0x1a 0x80 0x08 <1024 bytes> 0x20 0x80 0x7d 0x28 0x01). So the first byte, the
tag of the oneof field (field number << 3 | wire type 2), tells the frames apart: only 0x0a is parsed, and audio —
dozens of frames a second — costs one byte comparison.

The message classes are built at import from a FileDescriptorProto declared here (no protoc step, no generated
_pb2 module), in a descriptor pool of their own so they never clash with another `pipecat` schema in the process.
"""
from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_FIELD = descriptor_pb2.FieldDescriptorProto
_TYPES = {"uint64": _FIELD.TYPE_UINT64, "uint32": _FIELD.TYPE_UINT32, "string": _FIELD.TYPE_STRING,
          "bytes": _FIELD.TYPE_BYTES}

# pipecat.json of @heygen/streaming-avatar 2.1.0: message -> [(field name, field number, type)], names as there.
SCHEMA = {
    "TextFrame": [("id", 1, "uint64"), ("name", 2, "string"), ("text", 3, "string")],
    "AudioRawFrame": [("id", 1, "uint64"), ("name", 2, "string"), ("audio", 3, "bytes"),
                      ("sampleRate", 4, "uint32"), ("numChannels", 5, "uint32")],
    "TranscriptionFrame": [("id", 1, "uint64"), ("name", 2, "string"), ("text", 3, "string"),
                           ("userId", 4, "string"), ("timestamp", 5, "string")],
}
FRAME_ONEOF = [("text", 1, "TextFrame"), ("audio", 2, "AudioRawFrame"), ("transcription", 3, "TranscriptionFrame")]

TEXT_TAG = 1 << 3 | 2  # 0x0a: Frame.text (field 1), length-delimited


def _file_descriptor() -> Any:
    proto = descriptor_pb2.FileDescriptorProto(name="ilianaai_avatar/pipecat.proto", package="pipecat",
                                               syntax="proto3")
    for name, fields in SCHEMA.items():
        message = proto.message_type.add(name=name)
        for field_name, number, kind in fields:
            message.field.add(name=field_name, number=number, type=_TYPES[kind], label=_FIELD.LABEL_OPTIONAL)
    frame = proto.message_type.add(name="Frame")
    frame.oneof_decl.add(name="frame")
    for field_name, number, message_name in FRAME_ONEOF:
        frame.field.add(name=field_name, number=number, type=_FIELD.TYPE_MESSAGE, type_name=f".pipecat.{message_name}",
                        label=_FIELD.LABEL_OPTIONAL, oneof_index=0)
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_descriptor())
Frame = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("pipecat.Frame"))


def text_of(frame: bytes) -> str | None:
    """The text of a binary `pipecat.Frame` holding a TextFrame ("" when it holds none); None for any other frame —
    audio, transcription, or bytes that are not a well-formed Frame (never raises).

    A Frame that does not begin with the text field's tag is not parsed at all. (Protobuf would let a text field
    come after another oneof field; the SDK never writes one, and there the last field would win anyway.)"""
    if not frame or frame[0] != TEXT_TAG:
        return None
    try:
        parsed = Frame.FromString(frame)
    except Exception:  # DecodeError (truncated, bad varint, invalid UTF-8, ...): not a frame we can read
        return None
    return parsed.text.text if parsed.WhichOneof("frame") == "text" else None  # type: ignore[attr-defined]
