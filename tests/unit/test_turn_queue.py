"""services/turns.py TurnQueue: which turn a flush waits for (pending_since), whatever order the slots end in."""
import itertools

from services.turns import TurnQueue


def test_the_oldest_slot_still_held_is_what_flushes_wait_for():
    times = itertools.count(100.0)
    queue = TurnQueue(storage=None, capacity=10, clock=lambda: next(times))  # slots given back: nothing stored
    assert queue.pending_since() is None
    first, second, third = queue.take_slot(), queue.take_slot(), queue.take_slot()  # taken at 100, 101, 102
    assert queue.pending_since() == 100.0
    with second:
        pass  # given back unsubmitted, out of order
    assert queue.pending_since() == 100.0
    with first:
        pass
    assert queue.pending_since() == 102.0
    fourth = queue.take_slot()  # at 103
    with third:
        pass
    assert queue.pending_since() == 103.0 and len(queue) == 1
    with fourth:
        pass
    assert queue.pending_since() is None and len(queue) == 0
