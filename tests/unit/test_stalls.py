"""The event loop's stall watch and the garbage collector's pause timer (observability/stalls.py, metrics.py)."""
import asyncio
import gc
import logging
import time

from observability import metrics
from observability.stalls import StallWatch


def histogram_count(histogram, **labels):
    child = histogram.labels(**labels) if labels else histogram
    return next(sample.value for metric in child.collect() for sample in metric.samples
                if sample.name.endswith("_count"))


def hold_the_loop(seconds):
    time.sleep(seconds)  # what a blocking call on the loop's thread does


def test_a_stalled_loop_is_logged_with_its_stack_and_counted(caplog):
    stalls_before = histogram_count(metrics.LOOP_STALLS)

    async def main():
        watch = StallWatch(stall=0.2, tick=0.02)
        watch.start()
        await asyncio.sleep(0.1)
        hold_the_loop(0.5)
        await asyncio.sleep(0.1)  # the loop ticks again: the stall is measured
        watch.stop()

    with caplog.at_level(logging.WARNING, logger="gateway.stalls"):
        asyncio.run(main())
    reports = [r.getMessage() for r in caplog.records if "still" in r.getMessage()]
    assert len(reports) == 2, reports  # the stack once while it lasted, then its length once it was over
    assert "in hold_the_loop" in reports[0] and "time.sleep(seconds)" in reports[0]
    assert histogram_count(metrics.LOOP_STALLS) == stalls_before + 1


def test_a_loop_that_keeps_ticking_is_not_reported(caplog):
    async def main():
        watch = StallWatch(stall=0.2, tick=0.02)
        watch.start()
        for _ in range(10):
            hold_the_loop(0.05)  # short holds: lag, not a stall
            await asyncio.sleep(0)
        await asyncio.sleep(0.1)
        watch.stop()

    lag_before = histogram_count(metrics.LOOP_LAG)
    with caplog.at_level(logging.WARNING, logger="gateway.stalls"):
        asyncio.run(main())
    assert not [r for r in caplog.records if "stood still" in r.getMessage()]
    assert histogram_count(metrics.LOOP_LAG) > lag_before


def test_garbage_collections_are_timed_by_generation():
    metrics.time_gc_pauses()
    metrics.time_gc_pauses()  # installed once however often asked
    assert sum(isinstance(callback, metrics.GcPauseTimer) for callback in gc.callbacks) == 1
    before = histogram_count(metrics.GC_PAUSES, generation="2")
    gc.collect()
    assert histogram_count(metrics.GC_PAUSES, generation="2") == before + 1
