"""The gateway bench, module by module; bench/run.py is the entry point (bench/README.md).

    common      paths, the bench customer and databases, log(), two asyncio helpers
    measure     statistics, /proc readings, CpuMeter, the bench's GC pause, the open-files limit
    probes      timestamped WebSocket frames and where they arrive (ProbeSink, ProbeList, EchoList, ClientPeer)
    world       World: the processes every part shares (gateway child, MongoDB, emulators, anchors), started/stopped
    client      the load client's plumbing: REST calls, session pools, opening/closing sockets, MongoDB checks
    breakdown   the breakdown references of part 1, and every import of the gateway's own modules
    rest        1. REST
    websocket   2. WebSocket latency, throughput, socket set-up
    echo        2b. WebSocket echo at saturation
    openloop    2c. open loop
    memory      3. memory per idle relayed socket
    firstcall   6. a session's first call in a process (the gateway restarted), against warm and direct
    idle        7. 10,000 idle relayed sockets in one process: RSS per socket, /healthz meanwhile
    flows       8. 500 concurrent full sessions: the avatar's events HeyGen -> browser
    report      4. the ratios gateway / anchor, and the report text

Importing this package puts the repository root (for `sandbox` and the gateway's modules) and bench/ (for
`relays`) on sys.path, as bench/run.py always did.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH_DIR = os.path.join(ROOT, "bench")
for _path in (ROOT, BENCH_DIR):
    if _path not in sys.path:
        sys.path.insert(0, _path)
