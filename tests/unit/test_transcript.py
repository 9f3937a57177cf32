"""Transcript merging, pure: each utterance once, in spoken order, from whichever paths reported it."""
from domain.transcript import ChunkJoiner, for_petya, merge_all, merge_turn, new_turn


def test_a_repeat_task_and_its_socket_end_message_are_one_turn():
    turns, added = merge_turn([], new_turn("avatar", "Hello there!", 10.0, "task", "t1"))
    assert added
    turns, added = merge_turn(turns, new_turn("avatar", "Hello there! ", 10.4, "socket", "t1"))
    assert not added and len(turns) == 1
    assert turns[0]["sources"] == ["socket", "task"] and turns[0]["absolute_timestamp"] == 10.0


def test_a_reported_message_matches_by_words_not_punctuation_or_case():
    turns, _ = merge_turn([], new_turn("avatar", "Hello, there!", 10.0, "socket", "t1"))
    turns, added = merge_turn(turns, new_turn("avatar", "hello there", 12.0, "reported"))
    assert not added and len(turns) == 1


def test_the_same_path_saying_the_same_words_twice_is_two_turns():
    turns, _ = merge_turn([], new_turn("user", "yes", 10.0, "reported"))
    turns, added = merge_turn(turns, new_turn("user", "yes", 20.0, "reported"))
    assert added and len(turns) == 2


def test_same_words_far_apart_or_from_another_role_are_separate():
    turns, _ = merge_turn([], new_turn("user", "thanks", 10.0, "task"))
    turns, added = merge_turn(turns, new_turn("user", "thanks", 500.0, "reported"))
    assert added
    turns, added = merge_turn(turns, new_turn("avatar", "thanks", 10.0, "socket"))
    assert added and len(turns) == 3


def test_a_talk_task_and_the_avatar_reply_share_a_task_id_but_not_a_role():
    turns = merge_all([], [new_turn("user", "What can you do?", 1.0, "task", "t9"),
                           new_turn("avatar", "Many things.", 1.5, "socket", "t9")])
    assert [(t["role"], t["transcript"]) for t in turns] == [("user", "What can you do?"), ("avatar", "Many things.")]


def test_petya_format_is_in_spoken_order_with_both_timestamp_names():
    turns = merge_all([], [new_turn("avatar", "second", 2.0, "socket"), new_turn("user", "first", 1.0, "task")])
    assert for_petya(turns) == [
        {"role": "user", "transcript": "first", "absolute_timestamp": 1.0, "timestamp": 1.0},
        {"role": "avatar", "transcript": "second", "absolute_timestamp": 2.0, "timestamp": 2.0}]


def test_chunks_join_per_task_until_the_end_message():
    joiner = ChunkJoiner()
    events = [{"type": "avatar_start_talking", "task_id": "a"},
              {"type": "avatar_talking_message", "task_id": "a", "message": "Hello "},
              {"type": "user_talking_message", "task_id": "u", "text": "hi"},
              {"type": "avatar_talking_message", "task_id": "a", "message": "world."}]
    assert [joiner.feed(e, 5.0) for e in events] == [None] * 4
    turn = joiner.feed({"type": "avatar_end_message", "task_id": "a"}, 6.0)
    assert (turn["role"], turn["transcript"], turn["absolute_timestamp"], turn["task_ids"]) == \
        ("avatar", "Hello world.", 5.0, ["a"])
    assert joiner.feed({"event_type": "user_end_message", "task_id": "u", "message": "hi there"}, 7.0)["transcript"] \
        == "hi there"  # an end message's own text wins
    joiner.feed({"type": "avatar_talking_message", "task_id": "b", "message": "cut o"}, 8.0)
    assert [t["transcript"] for t in joiner.drain()] == ["cut o"]
    assert joiner.drain() == []
