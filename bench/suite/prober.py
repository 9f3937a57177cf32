"""Part 7's /healthz prober, a child process of its own (`python prober.py URL INTERVAL`): GET URL every INTERVAL
seconds on a new connection each time, as an orchestrator's probe does, with blocking sockets and nothing else to do,
so a slow answer is the gateway's, not the bench's busy event loop. Each probe is tagged with the phase last read on
stdin (one name per line); on "end" it prints {"latencies": {phase: [seconds...]}, "failures": {phase: n}} as one
JSON line and exits."""
import http.client
import json
import sys
import threading
import time
from urllib.parse import urlsplit


def main():
    url, interval = urlsplit(sys.argv[1]), float(sys.argv[2])
    state = {"phase": "before", "end": False}

    def read_phases():
        for line in sys.stdin:
            name = line.strip()
            if name == "end":
                state["end"] = True
                return
            if name:
                state["phase"] = name
        state["end"] = True
    threading.Thread(target=read_phases, daemon=True).start()
    latencies, failures = {}, {}
    while not state["end"]:
        phase, started = state["phase"], time.perf_counter()
        try:
            connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
            connection.request("GET", url.path)
            ok = connection.getresponse().status == 200
            connection.close()
        except OSError:
            ok = False
        took = time.perf_counter() - started
        if ok:
            latencies.setdefault(phase, []).append(took)
        else:
            failures[phase] = failures.get(phase, 0) + 1
        time.sleep(max(0.0, interval - took))
    print(json.dumps({"latencies": latencies, "failures": failures}), flush=True)


if __name__ == "__main__":
    main()
