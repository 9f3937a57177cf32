"""4. The headline figures side by side with the ratios gateway / anchor (ratios), and the report text printed at the
end of a run and stored under "table" in latest.json (report). Both read only the results dict."""
from suite import firstcall, flows, idle
from suite.rooms import report_lines as rooms_report_lines


def ratios(results):
    """The headline figures per target in one list, with gateway / anchor ratios."""
    anchors = list((results["meta"].get("anchors") or {}).keys())
    rows = []

    def add(metric, better, values):
        row = {"metric": metric, "better": better, **values}
        for name in anchors:
            g, a = values.get("gateway"), values.get(name)
            row[f"gateway/{name}"] = round(g / a, 3) if isinstance(g, (int, float)) and isinstance(a, (int, float)) \
                and g > 0 and a > 0 else None
        rows.append(row)

    rest = [r for r in results["rest"] if r["call"] == "streaming.keep_alive"]
    for c in sorted({r["concurrency"] for r in rest}, reverse=True):
        by = {r["target"]: r for r in rest if r["concurrency"] == c}
        if "gateway" not in by or "direct" not in by:
            continue
        if c > 1:
            add(f"REST keep_alive c={c}: requests per relay CPU-second", "higher",
                {t: r.get("req_per_relay_cpu_s") for t, r in by.items()})
            add(f"REST keep_alive c={c}: requests/s", "higher", {t: r["rps"] for t, r in by.items()})
        d = by["direct"]
        add(f"REST keep_alive c={c}: added p50 ms", "lower",
            {t: round(r["p50_ms"] - d["p50_ms"], 3) for t, r in by.items() if t != "direct"})
        add(f"REST keep_alive c={c}: added p99 ms", "lower",
            {t: round(r["p99_ms"] - d["p99_ms"], 3) for t, r in by.items() if t != "direct"})
    if results.get("echo"):
        by = {e["target"]: e for e in results["echo"]}
        add("WS echo saturation: frames echoed per relay CPU-second", "higher",
            {t: e.get("echoes_per_relay_cpu_s") for t, e in by.items()})
        add("WS echo saturation: frames echoed/s", "higher", {t: e["echoes_per_s"] for t, e in by.items()})
        add("WS echo saturation: relay %CPU", "-", {t: e.get("relay_cpu_pct") for t, e in by.items()})
    if results.get("openloop"):
        by = {o["target"]: o for o in results["openloop"]}
        o0 = results["openloop"][0]
        label = f"open loop {o0['sessions']}x{o0['fps']} fps"
        add(f"{label}: delivered frames/s", "higher", {t: o["delivered_frames_per_s_mean"] for t, o in by.items()})
        add(f"{label}: p50 ms", "lower", {t: o["p50_ms"] for t, o in by.items()})
        add(f"{label}: p99 ms (best 1 s window)", "lower", {t: o["window_p99_ms_min"] for t, o in by.items()})
        add(f"{label}: p99 ms (median 1 s window)", "lower", {t: o["window_p99_ms_median"] for t, o in by.items()})
        add(f"{label}: added p50 ms", "lower", {t: o.get("added_p50_ms") for t, o in by.items() if t != "direct"})
        add(f"{label}: added p99 ms (best 1 s window)", "lower",
            {t: o.get("added_window_p99_ms_min") for t, o in by.items() if t != "direct"})
        add(f"{label}: added p99 ms (median 1 s window)", "lower",
            {t: o.get("added_window_p99_ms_median") for t, o in by.items() if t != "direct"})
        add(f"{label}: added p99 ms (worst 1 s window)", "lower",
            {t: o.get("added_window_p99_ms_max") for t, o in by.items() if t != "direct"})
        add(f"{label}: frames per relay CPU-second", "higher",
            {t: o.get("frames_per_relay_cpu_s") for t, o in by.items() if t != "direct"})
    m = results.get("memory")
    if m:
        values = {"gateway": m["kib_per_socket"]}
        values.update({a["anchor"]: a["kib_per_socket"] for a in results.get("anchor_memory") or []})
        add(f"KiB RSS per idle relayed socket at {m['sockets']}", "lower", values)
    return rows


# --- report -----------------------------------------------------------------------------------------------------

def fmt(value, digits=2):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(headers, rows):
    widths = [max([len(str(h))] + [len(str(r[i])) for r in rows]) for i, h in enumerate(headers)]
    line = "  ".join(str(h).rjust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(str(c).rjust(w) for c, w in zip(r, widths)))
    return "\n".join(out)


def report(results):
    meta, args = results["meta"], results["meta"]["args"]
    out = []
    out.append(f"ilianaai-avatar gateway bench  {meta['started']}  ({meta['cpus']} CPUs, Python {meta['python']}, "
               f"tornado {meta['tornado']}; took {meta.get('duration_s')} s)")
    if "gateway_pid" not in meta:  # part 5 alone: no gateway was started
        return "\n".join(out + rooms_report_lines(results)[1:])
    out.append("gateway = `python server.py` child process; HeyGen emulator, Petya reference, load client = this "
               "process; MongoDB = SecantusDB child process. Loopback only.")
    if meta.get("part_seconds"):
        out.append("parts (s): " + ", ".join(f"{k} {v}" for k, v in meta["part_seconds"].items())
                   + (f"; {meta['gateway_pool']['sessions']} gateway sessions made in "
                      f"{meta['gateway_pool']['seconds']} s" if meta.get("gateway_pool") else ""))
    if meta.get("loadavg"):
        out.append("load average 1/5/15 min (/proc/loadavg) at the start and after each part: "
                   + "; ".join(f"{k} {v}" for k, v in meta["loadavg"].items()))
    anchors = meta.get("anchors") or {}
    if anchors:
        out.append("anchors, started by the bench in front of the same HeyGen emulator: "
                   + "; ".join(f"{name} {a['version']}" for name, a in anchors.items())
                   + " (nginx: 1 worker, access log off; node: bench/anchors/relay.js)")
    aff = meta.get("affinity") or {}
    if meta.get("pinned"):
        out.append("pinned (sched_setaffinity, every thread): "
                   + ", ".join(f"{name} CPU {','.join(map(str, cpus or []))}" for name, cpus in aff.items())
                   + ". The relay under test has its CPU to itself (other relays idle); load + upstream share the "
                     "other. Other work on the machine is not pinned away.")
    else:
        out.append("not pinned: every process may run on any CPU")

    def cpu_pcts(r, target):
        relay = r["cpu"].get(f"{target}_cpu_pct") if target != "direct" else None
        return f"{fmt(relay, 0) if relay is not None else '-'}/{r['cpu']['mongo_cpu_pct']:.0f}/" \
               f"{r['cpu']['bench_cpu_pct']:.0f}"

    def other(r):
        """CPU time the machine's other work took on the load CPU / the relay CPU (busy minus our processes)."""
        cpu = r["cpu"]
        if not meta.get("pinned") or f"cpu{args['load_cpu']}_busy_pct" not in cpu:
            return "-"
        ours_load = cpu["bench_cpu_pct"] + cpu["mongo_cpu_pct"]
        ours_relay = cpu["gateway_cpu_pct"] + sum(cpu.get(f"{name}_cpu_pct", 0)
                                                  for name in [*anchors, *(meta.get("layers") or {})])
        o_load = max(0.0, cpu[f"cpu{args['load_cpu']}_busy_pct"] - ours_load)
        o_relay = max(0.0, cpu[f"cpu{args['relay_cpu']}_busy_pct"] - ours_relay)
        return f"{o_load:.0f}/{o_relay:.0f}"

    if results["rest"]:
        section_rest(out, results, meta, args, cpu_pcts, other)
    if results["ws"]:
        section_ws(out, results, args)
    section_rest_of(out, results, meta, args, anchors, cpu_pcts, other)
    out.extend(firstcall.report_lines(results, fmt, table, cpu_pcts, other))
    out.extend(idle.report_lines(results, fmt, table))
    out.extend(flows.report_lines(results, fmt, table))
    out.extend(rooms_report_lines(results))
    return "\n".join(out)


def section_rest(out, results, meta, args, cpu_pcts, other):
    out.append("")
    out.append(f"1. REST: same call direct to the HeyGen emulator, through the gateway and (keep_alive) through each "
               f"anchor ({args['rest_seconds']} s per row after {args['warmup']} s warm-up; one session per client; "
               f"latencies in ms). relay = the process tree of the row's target.")
    rows = []
    for r in results["rest"]:
        errors = sum(r["errors"].values())
        rows.append([r["call"], r["target"], r["concurrency"], r["requests"], fmt(r["rps"], 0), fmt(r["p50_ms"], 3),
                     fmt(r["p95_ms"], 3), fmt(r["p99_ms"], 3),
                     f"{fmt(r['p50_first_10pct_ms'], 2)}->{fmt(r['p50_last_10pct_ms'], 2)}",
                     fmt(r.get("turns_per_session_after"), 0) if r["target"] in ("direct", "gateway") else "-",
                     errors, fmt(r.get("relay_cpu_ms_per_req"), 3), fmt(r.get("req_per_relay_cpu_s"), 0),
                     fmt(r["mongo_cpu_ms_per_req"], 3), cpu_pcts(r, r["target"]), other(r)])
    out.append(table(["call", "target", "conc", "reqs", "req/s", "p50", "p95", "p99", "p50 first->last 10%",
                      "turns", "err", "relay cpu ms/req", "req/relay cpu-s",
                      "db cpu ms/req", "%cpu relay/db/bench", "other %cpu L/R"], rows))
    out.append("   other %cpu L/R: what the machine's other work took of the load CPU and of the relay CPU during the "
               "row (from /proc/stat: busy minus our processes)")
    out.append("")
    out.append("   relay overhead (relayed minus direct; ratios relayed / direct)")
    rows = [[o["call"], o.get("target", "gateway"), o["concurrency"], fmt(o["added_p50_ms"], 3),
             fmt(o["added_p95_ms"], 3), fmt(o["added_p99_ms"], 3), f"{o['p50_ratio']:.2f}x", f"{o['p99_ratio']:.2f}x",
             f"{o['rps_ratio']:.2f}x"] for o in results["rest_overhead"]]
    out.append(table(["call", "target", "conc", "+p50 ms", "+p95 ms", "+p99 ms", "p50 ratio", "p99 ratio",
                      "req/s ratio"], rows))
    out.append("")
    out.append(f"   breakdown references, concurrency 1, {args['breakdown_iterations']} iterations each (ms)")
    rows = [[b["what"], fmt(b["p50_ms"], 3), fmt(b["p99_ms"], 3), f"{fmt(b['cpu_ms_per_iter'], 3)} ({b['cpu_of']})"]
            for b in results["breakdown"]]
    out.append(table(["what", "p50", "p99", "cpu ms/iter"], rows))
    out.extend(layer_lines(results))


def layer_lines(results):
    """1b. Where a warm keep_alive's relay CPU goes, per layer: the layer references (bench/anchors/layers.py) beside
    the gateway and Node, at each concurrency. Each layer's cost is the difference between two rows measured in the
    same run; the gateway's row counts its MongoDB too."""
    layers = list((results["meta"].get("layers") or {}).keys())
    rest = [r for r in results["rest"] if r["call"] == "streaming.keep_alive"]
    if not layers or not rest:
        return []
    out = ["", "1b. Where a warm keep_alive's CPU goes, per layer (ms of relay CPU per request; gateway = its process "
               "+ its MongoDB). tornado = a bare RequestHandler answering itself; +curl = forwarding through "
               "tornado's stock curl client; +gwcurl = through the gateway's (clients/http.py)"]
    rows = []
    for c in sorted({r["concurrency"] for r in rest}):
        by = {r["target"]: r for r in rest if r["concurrency"] == c}

        def ms(target, by=by):
            r = by.get(target)
            if not r or r.get("relay_cpu_ms_per_req") is None:
                return None
            return r["relay_cpu_ms_per_req"] + (r.get("mongo_cpu_ms_per_req") or 0 if target == "gateway" else 0)

        def minus(a, b):
            return None if a is None or b is None else a - b

        tornado, curl, gwcurl, gateway, node = (ms(t) for t in ("tornado", "tornado+curl", "tornado+gwcurl",
                                                                 "gateway", "node"))
        ceiling = 1 / gwcurl if gwcurl else None
        node_rate = 1 / node if node else None
        rows.append([c, fmt(tornado, 3), fmt(minus(curl, tornado), 3), fmt(minus(gwcurl, tornado), 3),
                     fmt(minus(gateway, gwcurl), 3), fmt(gateway, 3), fmt(node, 3),
                     fmt(ceiling / node_rate if ceiling and node_rate else None, 2),
                     fmt((1 / gateway) / node_rate if gateway and node_rate else None, 2)])
    out.append(table(["conc", "tornado server+handler", "stock curl call", "gateway's curl call",
                      "gateway's own code", "gateway (total)", "node (total)", "stack alone / node",
                      "gateway / node"], rows))
    out.append("   'stack alone / node' = requests per CPU-second of tornado+gwcurl over Node's: what the gateway "
               "could reach with none of its own code. A saturated row (its %cpu near 100) batches more per wake-up, "
               "so rows at different %cpu compare loosely; negative differences are within that noise.")
    return out


def section_ws(out, results, args):
    out.append("")
    out.append(f"2. WebSocket: one-way latency ({args['ws_frames']} frames, one in flight) and throughput "
               f"({args['ws_burst']} frames back to back), direct to the emulator vs relayed; binary "
               f"{args['binary_size']} B, text ~{args['text_size']} B JSON")
    rows = [[w["direction"], w["frame"], w["path"], fmt(w["p50_ms"], 3), fmt(w["p99_ms"], 3), fmt(w["max_ms"], 3),
             w["frames_per_s"], fmt(w["gateway_cpu_us_per_frame"], 1), fmt(w["bench_cpu_us_per_frame"], 1),
             f"{w['cpu']['gateway_cpu_pct']:.0f}/{w['cpu']['bench_cpu_pct']:.0f}"] for w in results["ws"]]
    out.append(table(["direction", "frame", "path", "p50 ms", "p99 ms", "max ms", "frames/s", "gw cpu us/frame",
                      "bench cpu us/frame", "%cpu gw/bench"], rows))
    out.append("")
    rows = [[o["direction"], o["frame"], fmt(o["added_p50_ms"], 3), fmt(o["added_p99_ms"], 3),
             f"{o['p50_ratio']:.2f}x", f"{o['throughput_ratio']:.2f}x"] for o in results["ws_overhead"]]
    out.append(table(["relay overhead", "frame", "+p50 ms", "+p99 ms", "p50 ratio", "frames/s ratio"], rows))
    out.append("")
    wm = results.get("ws_meta")
    if wm:
        out.append(f"   transcript turns HeyGen completed on the relayed socket: {wm['turns_sent']}; recorded by the "
                   f"gateway in MongoDB: {wm['relayed_session_turns']}")
        out.append("")
    rows = [[h["path"], h["n"], fmt(h["p50_ms"], 3), fmt(h["p99_ms"], 3)] for h in results["ws_handshake"]]
    out.append("   socket set-up: connect + first client frame delivered to HeyGen, one at a time (ms)")
    out.append(table(["path", "sockets", "p50", "p99"], rows))


def section_rest_of(out, results, meta, args, anchors, cpu_pcts, other):
    """2b, 2c, 3 and 4."""
    if results.get("echo"):
        e0 = results["echo"][0]
        out.append("")
        out.append(f"2b. WebSocket echo at saturation: {e0['sockets']} sockets x {e0['window']} binary frames "
                   f"({e0['frame_bytes']} B) in flight; client -> relay -> emulator, written straight back -> relay "
                   f"-> client. One echo = 2 relayed frames. RTT in ms.")
        rows = [[e["target"], e["echoes"], e["echoes_per_s"], fmt(e["p50_ms"], 3), fmt(e["p99_ms"], 3),
                 fmt(e.get("relay_cpu_us_per_echo"), 1), fmt(e.get("echoes_per_relay_cpu_s"), 0),
                 cpu_pcts(e, e["target"]), other(e)] for e in results["echo"]]
        out.append(table(["target", "echoes", "echoes/s", "p50 rtt", "p99 rtt", "relay cpu us/echo",
                          "echoes/relay cpu-s", "%cpu relay/db/bench", "other %cpu L/R"], rows))
        out.append("   the relay saturates when its %cpu is ~100; when bench is ~100 instead, the load + emulator side "
                   "is the limit and echoes/relay cpu-s is a lower bound for that relay (less batching per wake-up)")

    if results.get("openloop"):
        o0 = results["openloop"][0]
        out.append("")
        out.append(f"2c. Open loop: {o0['sessions']} sockets x {o0['fps']} binary frames/s ({o0['frame_bytes']} B, one "
                   f"talking user's microphone each) = {o0['offered_frames_per_s']} frames/s offered, client -> "
                   f"HeyGen, {o0['seconds']} s measured after {args['openloop_warmup']} s warm-up. Latency = arrival "
                   f"at the emulator minus the frame's scheduled send time, in ms; p99 per 1-second window.")
        rows = [[o["target"], f"{fmt(o['delivered_frames_per_s_mean'], 0)} ({o['delivered_frames_per_s_min']})",
                 o["lost_or_late"], fmt(o["p50_ms"], 3), fmt(o["p99_ms"], 3),
                 f"{fmt(o['window_p99_ms_min'], 2)}/{fmt(o['window_p99_ms_median'], 2)}/"
                 f"{fmt(o['window_p99_ms_max'], 2)}", o["windows_p99_over_10ms"],
                 fmt(o.get("added_p50_ms"), 3),
                 f"{fmt(o.get('added_window_p99_ms_min'), 2)}/{fmt(o.get('added_window_p99_ms_median'), 2)}/"
                 f"{fmt(o.get('added_window_p99_ms_max'), 2)}",
                 fmt(o.get("frames_per_relay_cpu_s"), 0), cpu_pcts(o, o["target"]), other(o),
                 fmt(o["sender_lateness"]["p99_ms"], 2)] for o in results["openloop"]]
        out.append(table(["target", "delivered/s (min)", "lost", "p50", "p99", "window p99 min/med/max",
                          "windows >10ms", "+p50", "+window p99 min/med/max", "frames/relay cpu-s",
                          "%cpu relay/db/bench", "other %cpu L/R", "send lag p99"], rows))

    m = results.get("memory")
    if m:
        out.append("")
        out.append(f"3. Memory: {m['sockets']} relayed sockets open at once (each = 1 client socket + 1 upstream "
                   f"socket in the gateway); the gateway process, and its MongoDB")
        rows = [[r["state"], f"{r['VmRSS'] / 1024:.1f}", f"{r['RssAnon'] / 1024:.1f}", r["fds"], r["Threads"],
                 fmt(r["mongo_rss_kib"] / 1024 if "mongo_rss_kib" in r else None, 1), r["relays_open"]]
                for r in m["readings"]]
        out.append(table(["gateway", "RSS MiB", "anon MiB", "fds", "threads", "MongoDB RSS MiB", "relays open"],
                         rows))
        out.append(f"   => {m['kib_per_socket']:.1f} KiB RSS per open relayed socket "
                   f"(+{m['rss_delta_kib'] / 1024:.1f} MiB for {m['sockets']}; anonymous memory "
                   f"{m['rss_anon_kib_per_socket']:.1f} KiB/socket), {m['fds_per_socket']:.2f} fds per socket; "
                   f"{m['rss_released_after_close_kib'] / 1024:.1f} MiB given back after closing")
        if m.get("mongo_kib_per_socket") is not None:
            both = m["kib_per_socket"] + m["mongo_kib_per_socket"]
            out.append(f"   MongoDB: {m['mongo_kib_per_socket']:.1f} KiB RSS per open relayed socket (its socket "
                       f"record on the session); gateway + MongoDB {both:.1f} KiB")
        if "round2_open_minus_round1_open_kib" in m:
            out.append(f"   round 2 vs round 1: open {m['round2_open_minus_round1_open_kib'] / 1024:+.1f} MiB, closed "
                       f"{m['round2_closed_minus_round1_closed_kib'] / 1024:+.1f} MiB")
        for number, r in enumerate(m["rounds"], 1):
            h = r["handshake"]
            out.append(f"   round {number}: {m['sockets']} sockets opened in {r['open_s']} s "
                       f"({m['open_concurrency']} at a time; handshake p50 {fmt(h['p50_ms'], 1)} ms, "
                       f"p99 {fmt(h['p99_ms'], 1)} ms); after closing them, the gateway took "
                       f"{fmt(r.get('close_records_settle_s'), 1)} s to record every close in MongoDB")
        out.append(f"   sessions created through the gateway at {m['sessions_per_s']}/s; open-files limit "
                   f"{meta['fd_limit']['soft_after']} (gateway: {m['gateway_nofile_limit']['soft']})")
    for a in results.get("anchor_memory") or []:
        r0, r1, r2 = a["readings"]
        out.append(f"   {a['anchor']}: {a['sockets']} relayed sockets to sessions made in the emulator: RSS "
                   f"{r0['rss_kib'] / 1024:.1f} -> {r1['rss_kib'] / 1024:.1f} MiB open -> {r2['rss_kib'] / 1024:.1f} "
                   f"MiB closed ({r0['processes']} processes) => {a['kib_per_socket']:.1f} KiB per socket, "
                   f"{a['fds_per_socket']:.2f} fds per socket; opened in {a['open_s']} s")

    if meta.get("ws_open_503_retries"):
        out.append(f"   sockets the gateway refused with 503 (MongoDB queue full) and the bench opened again: "
                   f"{meta['ws_open_503_retries']}")

    if results.get("ratios"):
        out.append("")
        names = [n for n in anchors]
        out.append("4. Gateway vs anchors, side by side (ratio = gateway / anchor; 'better' says which way is good)")
        rows = []
        for r in results["ratios"]:
            rows.append([r["metric"], r["better"], fmt(r.get("direct"), 2), fmt(r.get("gateway"), 2)]
                        + [fmt(r.get(n), 2) for n in names]
                        + [fmt(r.get(f"gateway/{n}"), 3) for n in names])
        out.append(table(["metric", "better", "direct", "gateway"] + names + [f"gw/{n}" for n in names], rows))
