"""observability.logs.BatchedStreamHandler: one write per loop iteration, in order, nothing left behind."""
import asyncio
import logging
import threading

from observability.logs import BatchedStreamHandler


class CountingStream:
    def __init__(self):
        self.writes = []

    def write(self, text):
        self.writes.append(text)

    def flush(self):
        pass


def logger_to(stream):
    log = logging.getLogger(f"test.batched.{id(stream)}")
    log.propagate = False
    log.setLevel(logging.INFO)
    handler = BatchedStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    return log, handler


def test_lines_of_one_loop_iteration_go_out_in_one_write_by_its_end():
    stream = CountingStream()
    log, _ = logger_to(stream)

    async def main():
        for i in range(5):
            log.info("line %d", i)
        assert stream.writes == []  # not yet: the iteration is not over
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert stream.writes == ["".join(f"line {i}\n" for i in range(5))]
        log.info("next")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert stream.writes[-1] == "next\n"

    asyncio.run(main())


def test_other_threads_and_no_loop_write_at_once_and_flush_empties_the_batch():
    stream = CountingStream()
    log, handler = logger_to(stream)
    log.info("no loop")
    assert stream.writes == ["no loop\n"]

    async def main():
        log.info("pending")
        thread = threading.Thread(target=log.info, args=("from a thread",))
        thread.start()
        thread.join()
        assert stream.writes[-1] == "from a thread\n"
        handler.flush()  # as logging.shutdown() does at exit
        assert stream.writes[-1] == "pending\n"

    asyncio.run(main())
