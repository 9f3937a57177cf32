"""`python bench/profiled_gateway.py OUT.prof [server.py args]`: the gateway (server.main) under cProfile, every
thread included (the event loop and the MongoDB executor threads), stats merged into OUT.prof at exit.

The clock is each thread's CPU time (time.thread_time), so the profile shows where CPU goes, not time spent blocked
waiting for MongoDB, HeyGen or the GIL.

bench/run.py --profile-gateway OUT.prof starts the gateway this way. cProfile slows Python code down (roughly 1.5-2x),
so figures from a profiled run are for finding where time goes, not for the table.
"""
import cProfile
import os
import pstats
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

_profiles = []
_lock = threading.Lock()
_thread_run = threading.Thread.run


def _profiled_run(self):
    profile = cProfile.Profile(time.thread_time)
    with _lock:
        _profiles.append(profile)
    profile.enable()
    try:
        _thread_run(self)
    finally:
        profile.disable()


def main():
    out = sys.argv[1]
    threading.Thread.run = _profiled_run
    import server
    profile = cProfile.Profile(time.thread_time)
    profile.enable()
    try:
        return server.main(sys.argv[2:])
    finally:
        profile.disable()
        stats = pstats.Stats(profile)
        with _lock:
            for thread_profile in _profiles:
                thread_profile.disable()  # threads still running at exit
                stats.add(thread_profile)
        stats.dump_stats(out)


if __name__ == "__main__":
    sys.exit(main())
