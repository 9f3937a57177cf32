"""domain/bridge.py: LiveAvatar's room events as HeyGen's, in every spelling LiveAvatar has used."""
import json

import pytest

from domain.bridge import Translator, joined, read_event, task_command


def events(*raw):
    return [read_event(json.dumps(e).encode()) for e in raw]


def run(translator, evs, now=100.0):
    out, turns, ended, stopped = [], [], [], []
    for i, event in enumerate(evs):
        t = translator.translate(event, now + i)
        out += list(t.events)
        turns += [t.turn] if t.turn else []
        ended += [t.speech_ended] if t.speech_ended else []
        stopped += [t.stopped] if t.stopped else []
    return out, turns, ended, stopped


def test_a_speech_becomes_heygens_events_with_the_whole_text_at_the_end():
    speech = events({"event_type": "avatar.speak_started", "source_event_id": "cmd-1"},
                    {"event_type": "avatar.transcription.chunk", "source_event_id": "cmd-1", "text": "Hello"},
                    {"event_type": "avatar.transcription.chunk", "source_event_id": "cmd-1", "text": "there"},
                    {"event_type": "avatar.transcription", "source_event_id": "cmd-1", "text": "Hello there"},
                    {"event_type": "avatar.speak_ended", "source_event_id": "cmd-1"})
    out, turns, ended, _ = run(Translator(), speech)
    assert out == [{"type": "avatar_start_talking", "task_id": "cmd-1"},
                   {"type": "avatar_talking_message", "task_id": "cmd-1", "message": "Hello"},
                   {"type": "avatar_talking_message", "task_id": "cmd-1", "message": " there"},
                   {"type": "avatar_end_message", "task_id": "cmd-1", "message": "Hello there"},
                   {"type": "avatar_stop_talking", "task_id": "cmd-1"}]
    assert [(t["role"], t["transcript"], t["task_ids"], t["sources"], t["absolute_timestamp"]) for t in turns] == [
        ("avatar", "Hello there", ["cmd-1"], ["room"], 100.0)]
    assert ended == ["cmd-1"]


@pytest.mark.parametrize("chunk,final", [("avatar.transcription_chunk", "avatar.transcription_ended"),
                                         ("avatar.transcription.chunk", "avatar.transcription")])
def test_every_spelling_and_a_final_without_text_joins_the_chunks(chunk, final):
    translator = Translator()
    translator.last_command = "cmd-9"  # events that name no command belong to the latest one
    out, turns, _, _ = run(translator, events({"event_type": "avatar.transcription_started"},
                                              {"event_type": chunk, "text": "Two"},
                                              {"event_type": chunk, "text": "words"},
                                              {"event_type": final}))
    assert out[-1] == {"type": "avatar_end_message", "task_id": "cmd-9", "message": "Two words"}
    assert turns[0]["transcript"] == "Two words"


def test_the_users_words_and_turns():
    out, turns, _, _ = run(Translator(), events(
        {"event_type": "user.speak_started"}, {"event_type": "user.transcription_chunk", "text": "Hi"},
        {"event_type": "user.speak_ended"}, {"event_type": "user.transcription_ended", "text": "Hi you"}))
    assert [e["type"] for e in out] == ["user_start", "user_talking_message", "user_stop", "user_end_message"]
    assert out[-1]["message"] == "Hi you" and turns[0]["role"] == "user" and turns[0]["transcript"] == "Hi you"


def test_unknown_events_and_garbage_are_ignored_quietly_and_a_stop_is_reported():
    assert read_event(b"not json") is None and read_event(b'{"type": "x"}') is None
    out, turns, _, stopped = run(Translator(), events({"event_type": "elevenlabs_agent_event"},
                                                      {"event_type": "session.stopped", "stop_reason": "NO_CREDITS"}))
    assert out == [] and turns == [] and stopped == ["no_credits"]


def test_task_commands_and_joining():
    assert task_command(None, "x")["event_type"] == "avatar.speak_text"
    assert task_command("talk", "x")["event_type"] == "avatar.speak_response"
    assert task_command("repeat", "x")["text"] == "x" and task_command("repeat", "x")["event_id"]
    assert joined(["Hello", "there", " you"]) == "Hello there you"
