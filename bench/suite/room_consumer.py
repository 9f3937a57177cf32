"""The gateway's per-room work in a bridged session, as a consumer for bench/suite/rooms.py
(`--rooms-consumer bench.suite.room_consumer:make`): every LiveAvatar event is read (domain/bridge.py: every
spelling), translated into HeyGen's events, and those are published back into the room as the room agent does for
HeyGen's web SDK (services/rooms.py). Turns are built but not stored (MongoDB is not part of this measurement)."""
import asyncio
import json
import time

from domain.bridge import RESPONSE_TOPIC, Translator, read_event


def make(index, publish):
    translator = Translator()
    turns = []
    sending = set()  # publishes under way, held until done

    def on_packet(sender, topic, payload):
        if topic != RESPONSE_TOPIC:
            return
        event = read_event(payload)
        if event is None:
            return
        translation = translator.translate(event, time.time())
        for message in translation.events:
            task = asyncio.ensure_future(publish(json.dumps(message).encode(), None))
            sending.add(task)
            task.add_done_callback(sending.discard)
        if translation.turn is not None:
            turns.append(translation.turn)
            del turns[:-10]  # bounded, as the turn queue is drained
    return on_packet
