"""Where the time goes, from py-spy's collapsed stacks (``py-spy record --format raw``,
or ``throughput.py --profile DIR``).

Usage: ``.venv/bin/python bench/profile_summary.py FILE [FILE...] [--top 20]``

For each file prints: the share of samples per activity (the innermost frame of a
stack that names a known step: fetch script, ack pipeline, decode, the job's own
code, BRPOP, HTTP GET, heartbeat, the hub...), then the functions with the most
self time and the most inclusive time. Samples are on-CPU only (py-spy leaves idle
threads out unless told ``--idle``), so the shares are shares of CPU time.
"""

from __future__ import annotations

import argparse
import collections
import sys

# (function name prefix, activity), looked for from the innermost frame outwards:
# the first frame that matches names the sample's activity
ACTIVITIES = [
    ("http_get", "HTTP GET (urllib, job code)"),
    ("fib", "fib (job code)"),
    ("Latency.perform", "job code"),
    ("Noop.perform", "job code"),
    ("Fetcher._reserve_batch", "fetch: batch script call (reserve + carried acks)"),
    ("Fetcher._reserve_blocking", "fetch: blocking pop when the queue is empty"),
    ("Fetcher.requeue", "push back"),
    ("Fetcher", "fetch: hand-off between workers"),
    ("Acker.flush", "ack pipeline"),
    ("Acker", "acker loop"),
    ("Worker._decode", "decode + lookup + argument check"),
    ("Supervisor", "supervisor"),
    ("Worker._perform", "perform wrapper (timeout, supervisor, instance)"),
    ("Worker._record_failure", "failure path"),
    ("Worker", "worker loop bookkeeping"),
    ("Monitor", "heartbeat"),
    ("Poller", "poller"),
    ("Requeuer", "requeuer"),
    ("Manager", "manager"),
    ("main.<locals>.loop", "raw loop (BRPOP + bookkeeping)"),
    ("main.<locals>.work", "raw loop work"),
    ("Hub.run", "gevent hub (loop, switches, callbacks)"),
    ("_WorkerGreenlet", "gevent threadpool thread (getaddrinfo per connect; may include "
                        "its idle waits)"),
]


def parse(path: str) -> list[tuple[list[str], int]]:
    stacks = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            body, _, count = line.rpartition(" ")
            try:
                n = int(count)
            except ValueError:
                continue
            frames = body.split(";")
            if frames and frames[0].startswith("process "):
                frames = frames[1:]
            stacks.append((frames, n))
    return stacks


def function(frame: str) -> str:
    return frame.split(" (", 1)[0]


def where(frame: str) -> str:
    """``func (file:line)`` -> ``func (file)``: lines of one function together."""
    name, _, rest = frame.partition(" (")
    return f"{name} ({rest.rsplit(':', 1)[0]})" if rest else name


def activity(frames: list[str]) -> str:
    for frame in reversed(frames):
        name = function(frame)
        for prefix, label in ACTIVITIES:
            if name.startswith(prefix):
                return label
    return "other (startup, threads, ...)"


def summarize(path: str, top: int) -> str:
    stacks = parse(path)
    total = sum(n for _, n in stacks)
    if not total:
        return f"{path}: no samples"
    by_activity: collections.Counter = collections.Counter()
    self_time: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    for frames, n in stacks:
        by_activity[activity(frames)] += n
        if frames:
            self_time[where(frames[-1])] += n
        for name in {where(f) for f in frames}:
            inclusive[name] += n
    lines = [f"{path}: {total} on-CPU samples", "", "  by activity:"]
    lines += [f"    {n / total * 100:5.1f}%  {label}" for label, n in by_activity.most_common()]
    lines += ["", f"  top {top} self time:"]
    lines += [f"    {n / total * 100:5.1f}%  {name}" for name, n in self_time.most_common(top)]
    lines += ["", f"  top {top} inclusive time:"]
    lines += [f"    {n / total * 100:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+")
    p.add_argument("--top", type=int, default=20)
    args = p.parse_args(argv)
    print("\n\n".join(summarize(path, args.top) for path in args.files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
