"""Statistics and process readings: latency percentiles, CPU and RSS from /proc, a CPU meter over every process of a
run, the bench's garbage-collector pause, and its open-files limit. (Pinning and the readings summed over an anchor's
process tree are in bench/relays.py.)"""
import gc
import os
import resource
import time

import relays  # bench/relays.py: the anchor relays, pinning, /proc readings

CLK_TCK = os.sysconf("SC_CLK_TCK")


def percentile(sorted_values, p):
    """Linear-interpolated percentile (p in 0..100) of an already sorted list."""
    if not sorted_values:
        return None
    k = (len(sorted_values) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def latency_summary(seconds):
    """p50/p95/p99/mean/max in milliseconds of a list of durations in seconds."""
    values = sorted(seconds)
    ms = lambda v: None if v is None else round(v * 1000.0, 3)  # noqa: E731
    return {"n": len(values), "p50_ms": ms(percentile(values, 50)), "p95_ms": ms(percentile(values, 95)),
            "p99_ms": ms(percentile(values, 99)), "mean_ms": ms(sum(values) / len(values) if values else None),
            "max_ms": ms(values[-1] if values else None)}


def proc_cpu_seconds(pid):
    """user+system CPU seconds of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status(pid):
    """VmRSS, RssAnon, VmHWM (KiB) and Threads of a process, from /proc/<pid>/status."""
    wanted = {"VmRSS", "RssAnon", "RssFile", "VmHWM", "Threads"}
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in wanted:
                out[name] = int(value.split()[0])
    return out


def proc_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_nofile_limit(pid):
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                parts = line.split()
                return {"soft": parts[3], "hard": parts[4]}
    return None


class BenchGcPaused:
    """This process's garbage collector, off for one measurement and run right after. A full collection walks the
    emulators' whole heap (thousands of sessions) and stalls the event loop that sends, receives and timestamps for
    tens of ms: that would show up as relay latency. The relays' own collectors are not touched."""

    def __enter__(self):
        self.was_enabled = gc.isenabled()
        gc.disable()
        return self

    def __exit__(self, *exc):
        if self.was_enabled:
            gc.enable()
            gc.collect()


class CpuMeter:
    """CPU seconds used by the gateway, MongoDB server, each anchor relay (its whole process tree) and this process
    between two snapshots."""

    def __init__(self, pids):
        self.pids = pids  # name -> pid, or name -> callable returning the pids of a process tree

    def snapshot(self):
        snap = {}
        for name, pid in self.pids.items():
            snap[name] = relays.cpu_seconds(pid()) if callable(pid) else proc_cpu_seconds(pid)
        snap["bench"] = time.process_time()
        snap["cpus"] = relays.cpu_times()
        snap["wall"] = time.perf_counter()
        return snap

    @staticmethod
    def diff(before, after):
        wall = after["wall"] - before["wall"]
        out = {"wall_s": round(wall, 3)}
        for cpu, (busy, steal, total) in before["cpus"].items():
            b2, s2, t2 = after["cpus"][cpu]
            if t2 > total:
                out[f"{cpu}_busy_pct"] = round(100.0 * (b2 - busy) / (t2 - total), 1)
                out[f"{cpu}_steal_pct"] = round(100.0 * (s2 - steal) / (t2 - total), 1)
        for name in before:
            if name not in ("wall", "cpus"):
                used = after[name] - before[name]
                out[f"{name}_cpu_s"] = round(used, 3)
                out[f"{name}_cpu_pct"] = round(100.0 * used / wall, 1) if wall > 0 else None
        return out


def raise_fd_limit(needed):
    """Raise this process's soft RLIMIT_NOFILE to `needed` (children inherit it), and the hard limit too when it is
    lower and this process may (root: CAP_SYS_RESOURCE, up to fs.nr_open); returns (soft before, soft after, hard
    before, hard after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard_before = hard
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, needed))
            hard = needed
        except (ValueError, OSError):
            pass
    target = soft
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard_before, hard
