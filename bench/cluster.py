"""What running on Redis Cluster costs or gains, in one run (``make bench-cluster``).

Usage: ``.venv/bin/python bench/cluster.py [--quick] [--repeat N] [--masters 3] [--queues 4]``

Starts two throwaway targets on loopback: a single server
(``jiggler_gevent.devserver.LocalServer``) and a cluster of ``--masters`` primaries
(``LocalCluster``, the 16384 slots split evenly), and runs on each, interleaved:

* the raw loop (``raw_brpop.py``: ``-c`` greenlets each looping ``BRPOP key 1``, one
  BRPOP per job, one key): with ``redis.Redis`` on the single server, with redis-py's
  ``RedisCluster`` on the cluster (it sends each BRPOP to the primary of the key's
  slot). It is every row's floor; the multi-queue rows have the same one-key floor;
* noop jobs at ``-c 100``, at-least-once and at-most-once, on 1 queue (``default``) and
  on ``--queues`` queues, listened to in two orders: **strict** (``-q q0,q1,...``, what
  a list without weights or with every weight 1 means: the first non-empty queue
  first, so they drain one after another) and **weighted** with equal weights
  (``-q q0:2,q1:2,...``: the order is drawn per fetch round, so every queue, and every
  shard, is busy at once). The queue names are picked so that their hash tags
  (``Keys().queue_keys(name).tag``) fall in slots of different primaries, round robin
  (the same names on the single server). Jobs are pushed split evenly over them;
* ``-p 2`` (two worker processes of ``-c 100`` each) on the weighted multi-queue case,
  on both targets: the single server is the control for "does the cluster spread the
  load".

Every run is one of bench/throughput.py's (imported, not copied: ``Bench.run_throughput``
starts the worker or raw loop on an empty queue, pushes more jobs than the window
needs, measures the steady rate in a window that starts ``--warmup`` s (1) after the
push, stops it and checks that every job was processed or is still queued). Each
scenario runs ``--repeat`` times (3), the targets alternating, so every ratio is taken
between runs seconds apart; the table shows medians, and the ratios' range. Redis CPU
is read per node (``INFO cpu``) over the same window. Results go to
bench/results/cluster.json (``--quick``: cluster-quick.json). Exit status 1 when a run
lost or failed jobs or a process misbehaved.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import shlex
import sys
import tempfile
import time
import types
from typing import Any, Optional

import redis
from redis.crc import key_slot

from jiggler_gevent.connection import make_client
from jiggler_gevent.devserver import LocalCluster, LocalServer
from jiggler_gevent.keys import DEFAULT_QUEUE, Keys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import workloads  # noqa: E402
from bench_jobs import Noop  # noqa: E402
from throughput import (  # noqa: E402
    ALO,
    MODES,
    RAW_BIN,
    RESULTS_DIR,
    Bench,
    BenchError,
    drop_logs,
    fmt_range,
    fmt_rate,
    fmt_us,
    fmt_x,
    loadavg,
    machine_info,
    median,
    noise_line,
    paired,
    pick,
    save_result,
    stat,
    table,
)

SINGLE, CLUSTER = "single", "cluster"
TARGETS = (SINGLE, CLUSTER)
# first guesses of the rates at -c 100 (jobs/s), to size the first push of each
# scenario; later pushes use the rates measured in this run
GUESS = {"ours": 60_000, "raw": 20_000}

# The raw loop on the cluster: raw_brpop.py itself, with redis-py's RedisCluster where it
# builds a redis.Redis; monkey-patched first, as raw_brpop.py does before importing redis.
RAW_CLUSTER_LAUNCH = (
    "import sys; from gevent import monkey; monkey.patch_all(); "
    f"sys.path.insert(0, {HERE!r}); import cluster; "
    "sys.exit(cluster.raw_cluster_loop(sys.argv[1:]))"
)


class _ClusterPool:
    """What raw_brpop.py gets for ``redis.BlockingConnectionPool.from_url(url, ...)``:
    a redis-py ``RedisCluster`` (from one startup node) with a blocking pool per node."""

    def __init__(self, url: str, max_connections: int) -> None:
        self.client = redis.RedisCluster.from_url(
            url, max_connections=max_connections,
            connection_pool_class=redis.BlockingConnectionPool)

    def disconnect(self) -> None:
        self.client.close()


def raw_cluster_loop(argv: list[str]) -> int:
    """Run raw_brpop.py's loop over a ``RedisCluster`` (the two names it uses of
    ``redis`` stand for the cluster client); ``argv`` are raw_brpop.py's options."""
    import raw_brpop

    raw_brpop.redis = types.SimpleNamespace(
        BlockingConnectionPool=types.SimpleNamespace(from_url=_ClusterPool),
        Redis=lambda connection_pool: connection_pool.client)
    sys.argv = [RAW_BIN, *argv]
    return raw_brpop.main()


def split(count: int, parts: int) -> list[int]:
    """``count`` split into ``parts`` near-equal sizes."""
    return [count // parts + (i < count % parts) for i in range(parts)]


class Target(Bench):
    """throughput.Bench on one target: workers listen on ``queues`` (jobs pushed split
    evenly over them), the server CPU is summed over the nodes (and kept per node)."""

    def __init__(self, name: str, url: str, node_urls: list[str], log_dir: str,
                 plan: argparse.Namespace, client: Optional[redis.Redis] = None,
                 raw_url: Optional[str] = None) -> None:
        os.makedirs(log_dir, exist_ok=True)
        super().__init__(url, "", True, log_dir, plan, client=client)
        self.name = name
        self.raw_url = raw_url
        self.node_clients = [redis.Redis.from_url(u) for u in node_urls]
        self.node_cpu_log: list[list[float]] = []
        self.script_calls_log: list[int] = []

    def raw_command(self) -> list[str]:
        if self.raw_url is None:
            return super().raw_command()
        return [sys.executable, "-c", RAW_CLUSTER_LAUNCH, "--redis-url", self.raw_url]

    def payloads(self, job_class: type, args: tuple, count: int,
                 queue: Optional[str] = None) -> list[bytes]:
        names = self.queue_names
        if queue is not None or len(names) == 1:
            return super().payloads(job_class, args, count, queue)
        out: list[bytes] = []
        for name, part in zip(names, split(count, len(names))):
            out += super().payloads(job_class, args, part, queue=name)
        return out

    def push(self, encoded: list[bytes], key: Optional[str] = None) -> None:
        names = self.queue_names
        if key is not None or len(names) == 1:
            return super().push(encoded, key)
        start = 0
        for name, part in zip(names, split(len(encoded), len(names))):
            super().push(encoded[start:start + part], self.keys.queue(name))
            start += part

    def server_cpu(self) -> float:
        """Summed over the nodes; also logs each node's CPU and the script calls (EVALSHA
        and EVAL: fetch rounds, ack-only calls, the worker's other scripts) of all nodes."""
        values, scripts = [], 0
        for client in self.node_clients:
            with client.pipeline(transaction=False) as pipe:
                pipe.info("cpu")
                pipe.info("commandstats")
                cpu, commands = pipe.execute()
            values.append(float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]))
            scripts += sum(commands.get(f"cmdstat_{name}", {}).get("calls", 0)
                           for name in ("evalsha", "eval"))
        self.node_cpu_log.append(values)
        self.script_calls_log.append(scripts)
        return sum(values)

    def measure(self, proc, total: int, window: float, with_endpoint: bool = False) -> dict:
        self.node_cpu_log.clear()
        self.script_calls_log.clear()
        out = super().measure(proc, total, window, with_endpoint)
        if len(self.node_cpu_log) == 2 and out.get("seconds"):  # the window's two snapshots
            first, last = self.node_cpu_log
            out["node_cpu_cores"] = [(b - a) / out["seconds"] for a, b in zip(first, last)]
            if out.get("jobs"):
                calls = self.script_calls_log[1] - self.script_calls_log[0]
                out["script_calls_per_100_jobs"] = calls / out["jobs"] * 100
        if len(self.queues) > 1:  # how evenly the worker drew from the queues
            out["left_per_queue"] = {name: self.client.llen(self.keys.queue(name))
                                     for name in self.queue_names}
        return out

    def cleanup(self) -> None:
        try:
            super().cleanup()
        finally:
            for client in self.node_clients:
                client.close()


def spread_queues(cluster: LocalCluster, count: int) -> list[str]:
    """``count`` queue names whose slots belong to the primaries in turn (q0 on the
    first, q1 on the second, ...)."""
    keys = Keys()
    owner: dict[int, int] = {}  # slot -> index of its primary
    primaries = [node.port for node in cluster.masters]
    names: list[str] = []
    i = 0
    while len(names) < count:
        name = f"q{i}"
        i += 1
        slot = key_slot(keys.queue_keys(name).tag.encode())
        if slot not in owner:
            owner[slot] = primaries.index(cluster.slot_owner(slot).port)
        if owner[slot] == len(names) % len(primaries):
            names.append(name)
    return names


def placement(cluster: LocalCluster, names: list[str]) -> dict:
    keys = Keys()
    primaries = [node.port for node in cluster.masters]
    out = {}
    for name in names:
        slot = key_slot(keys.queue_keys(name).tag.encode())
        port = cluster.slot_owner(slot).port
        out[name] = {"slot": slot, "port": port, "node": primaries.index(port) + 1}
    return out


# the plan -----------------------------------------------------------------------------


STRICT, WEIGHTED = "strict", "weighted"
EQUAL_WEIGHT = 2  # every weight 1 would mean strict order
# (multi-queue order or None for 1 queue, worker processes), in the order they run
SCENARIOS = ((None, 1), (STRICT, 1), (WEIGHTED, 1), (WEIGHTED, 2))


def run_all(targets: dict[str, Target], plan: argparse.Namespace, names: list[str]) -> dict:
    runs: list[dict] = []
    loads: list[str] = []
    c = plan.concurrency
    layouts = {STRICT: names, WEIGHTED: [f"{name}:{EQUAL_WEIGHT}" for name in names]}

    def throughput(target: Target, kind: str, order: Optional[str] = None,
                   mode: Optional[str] = None, processes: int = 1, repeat: int = 0) -> None:
        target.queues = layouts[order] if kind == "ours" and order else [DEFAULT_QUEUE]
        queues = len(target.queues)
        scenario = f"{target.name} {queues}q {order or ''} -p {processes}"
        key = f"{scenario} {kind} {mode}"
        run = target.run_throughput(
            section="noop", scenario=scenario, kind=kind, job_class=Noop, args=(),
            concurrency=c, window=plan.window, mode=mode or ALO, processes=processes,
            estimate_key=key, guess=GUESS[kind] * processes, minimum=plan.min_jobs,
            repeat=repeat)
        run.update(target=target.name, queues=queues, order=order)
        runs.append(run)
        rate = "n/a" if run["rate"] is None else f"{run['rate']:,.0f}"
        nodes = " ".join(f"{x:.2f}" for x in run.get("node_cpu_cores") or [])
        what = "raw loop" if kind == "raw" else \
            f"{queues} queue(s) {order or ''} {mode} -p {processes}".replace("  ", " ")
        print(f"    {target.name:7s} {what}: {rate} jobs/s (redis cores {nodes})", flush=True)

    for repeat in range(plan.repeat):
        tag = f"run {repeat + 1}/{plan.repeat}"
        loads.append(loadavg())
        print(f"{tag}: load average {loads[-1]}", flush=True)
        for target in targets.values():
            throughput(target, "raw", repeat=repeat)
        for order, processes in SCENARIOS:
            for mode in MODES:
                for target in targets.values():
                    throughput(target, "ours", order, mode, processes, repeat=repeat)
    return {"runs": runs, "loadavg_per_repeat": loads}


def node_cores(runs: list[dict]) -> Optional[list[float]]:
    per_run = [r["node_cpu_cores"] for r in runs if r.get("node_cpu_cores")]
    if not per_run:
        return None
    return [median(list(values)) for values in zip(*per_run)]


def summarize(data: dict, queues: int) -> dict:
    runs = data["runs"]
    rows = []
    raws = {t: pick(runs, target=t, kind="raw") for t in TARGETS}
    for t in TARGETS:
        rows.append({"target": t, "kind": "raw", "queues": 1, "order": None, "mode": None,
                     "processes": 1,
                     "rate": stat(raws[t]), "vs_raw": None,
                     "vs_single": paired(raws[t], raws[SINGLE]) if t == CLUSTER else None,
                     "vs_p1": None, "cpu_us": stat(raws[t], "cpu_us_per_job")["median"],
                     "client_cores": stat(raws[t], "cpu_cores")["median"],
                     "redis_cores": node_cores(raws[t]),
                     "redis_us": stat(raws[t], "server_cpu_us_per_job")["median"],
                     "scripts": None})
    for order, p in SCENARIOS:
        q = queues if order else 1
        for mode in MODES:
            where = dict(kind="ours", order=order, mode=mode)
            single = pick(runs, target=SINGLE, processes=p, **where)
            for t in TARGETS:
                ours = pick(runs, target=t, processes=p, **where)
                p1 = pick(runs, target=t, processes=1, **where)
                rows.append({
                    "target": t, "kind": "ours", "queues": q, "order": order, "mode": mode,
                    "processes": p,
                    "rate": stat(ours), "vs_raw": paired(ours, raws[t]),
                    "vs_single": paired(ours, single) if t == CLUSTER else None,
                    "vs_p1": paired(ours, p1) if p > 1 else None,
                    "cpu_us": stat(ours, "cpu_us_per_job")["median"],
                    "client_cores": stat(ours, "cpu_cores")["median"],
                    "redis_cores": node_cores(ours),
                    "redis_us": stat(ours, "server_cpu_us_per_job")["median"],
                    "scripts": stat(ours, "script_calls_per_100_jobs")["median"],
                })
    return {"rows": rows, "noise": {"noop": {
        "other_cores": stat(runs, "other_cores"), "steal_cores": stat(runs, "steal_cores"),
        "machine_busy_cores": stat(runs, "machine_busy_cores")}}}


# reporting ----------------------------------------------------------------------------


def fmt_ratio(p: Optional[dict]) -> str:
    if not p or p.get("median") is None:
        return ""
    spread = fmt_range(p)
    return fmt_x(p["median"]) + (f" ({spread})" if spread else "")


def fmt_cores(values: Optional[list[float]]) -> str:
    return "n/a" if not values else " ".join(f"{v:.2f}" for v in values)


def render(result: dict) -> str:
    m, p, s = result["machine"], result["plan"], result["summary"]
    nproc = m["nproc"]
    place = result["queues"]
    lines = [
        f"machine: {nproc} cpu(s) {m['cpu']}; {m['python']}; {m['platform']}",
        f"server:  {m['server']} ({m['server_binary']}); cluster of {p['masters']} primaries "
        "on loopback, no replicas",
        f"libs:    redis-py {m['redis_py']}, gevent {m['gevent']}, ujson {m['ujson']}, "
        f"jiggler-gevent {m['jiggler_gevent']} ({m['git'] or 'no git'})",
        f"load:    load average {m['loadavg_before']} before, "
        f"{' / '.join(m.get('loadavg_per_repeat') or [])} at each repeat's start, "
        f"{m['loadavg_after']} after; {result['seconds']:.0f} s in all",
        f"runs:    noop jobs, -c {p['concurrency']} per process; median of {p['repeat']} "
        f"interleaved run(s) per row; steady rate in a {p['window']:g} s window after a "
        f"{p['warmup']:g} s warm-up, the queues kept full; at least "
        f"{min(r['pushed'] for r in result['runs']):,} jobs pushed per run",
        "queues:  1 queue = default (cluster node "
        f"{place['default']['node']}, slot {place['default']['slot']}); "
        f"{p['queues']} queues = " + ", ".join(
            f"{n} (node {v['node']})" for n, v in place.items() if n != "default")
        + f", jobs split evenly; strict = -q {','.join(n for n in place if n != 'default')} "
        f"(drained one after another), weighted = every weight {EQUAL_WEIGHT} (order drawn "
        "per fetch round)",
        "",
    ]
    rows = []
    for r in s["rows"]:
        if r["kind"] == "raw":
            what = "raw loop (1 key)"
        else:
            what = (f"{r['queues']} queue{'s' if r['queues'] > 1 else ''} "
                    + (f"{r['order']} " if r["order"] else "")
                    + f"{'ALO' if r['mode'] == ALO else 'AMO'} -p {r['processes']}")
        rows.append([what, r["target"], fmt_rate(r["rate"]["median"]), fmt_ratio(r["vs_raw"]),
                     fmt_ratio(r["vs_single"]), fmt_ratio(r["vs_p1"]), fmt_us(r["cpu_us"]),
                     fmt_us(r["redis_us"]), "" if r["scripts"] is None else fmt_us(r["scripts"]),
                     fmt_cores(r["redis_cores"]),
                     "n/a" if r["client_cores"] is None else f"{r['client_cores']:.2f}"])
    lines += table(["scenario", "target", "jobs/s", "vs raw", "cluster/single", "-p2/-p1",
                    "CPU us/job", "redis us/job", "scripts/100 jobs", "redis cores per node",
                    "worker cores"], rows)
    lines += [
        "(ALO = at-least-once, AMO = at-most-once; vs raw = jobs/s over the raw loop's on the "
        "same target; cluster/single = over the same row on the single server; ratios are "
        "medians of per-repeat pairs, their range in brackets; CPU us/job = the worker's "
        "(or raw loop's) process tree; worker cores = that tree's CPU in the window; "
        "scripts/100 jobs = EVALSHA calls on all nodes per 100 jobs: fetch rounds, ack-only "
        "calls, the worker's other scripts)",
    ]
    lines += noise_line(s, "noop")
    lines.append(
        f"NOTE: {nproc} cpu(s) here, shared by the worker process(es), the redis-server "
        f"process(es) ({p['masters']} on the cluster) and this bench: -p 2 / -p 1 shows "
        "whether a second process gets more jobs through on each target, not how far either "
        "would scale with a core per process and per node.")
    busy = m.get("loadavg_before_1m")
    if busy is not None and busy > 0.5 * nproc:
        lines.append(f"NOTE: load average {busy:.2f} on {nproc} cpu(s) at the start: other "
                     "processes were busy; jobs/s are noisy, the paired ratios less so")
    return "\n".join(lines)


# main ---------------------------------------------------------------------------------


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="jiggler-gevent on one server and on a Redis "
                                            "Cluster, each next to a raw redis-py BRPOP loop")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run (under a minute): short windows, few jobs, one repeat")
    p.add_argument("--repeat", type=int, default=None, help="runs per scenario (default 3; "
                                                             "1 with --quick)")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds after the push before a window starts (default 1; 0.4 quick)")
    p.add_argument("--window", type=float, default=None, help="seconds (default 2; 0.5 quick)")
    p.add_argument("--min-jobs", type=int, default=None,
                   help="fewest jobs pushed per run (default 20000; 5000 quick); more are "
                        "pushed when the measured rate needs them")
    p.add_argument("--concurrency", "-c", type=int, default=100)
    p.add_argument("--masters", type=int, default=3, help="primaries of the cluster")
    p.add_argument("--queues", type=int, default=4, help="queues of the multi-queue runs")
    p.add_argument("--output", default=None, help="JSON results file (default "
                   "bench/results/cluster.json; cluster-quick.json with --quick)")
    p.add_argument("--worker-args", default="", help="extra options for every worker run")
    p.add_argument("--keep-logs", action="store_true", help="keep the logs' directory")
    args = p.parse_args(argv)
    defaults = {"repeat": (1, 3), "warmup": (0.4, 1.0), "window": (0.5, 2.0),
                "min_jobs": (5_000, 20_000)}
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if min(args.repeat, args.concurrency, args.masters, args.min_jobs) < 1 \
            or args.queues < 2 or args.window <= 0:
        p.error("counts and windows must be positive, --queues at least 2")
    args.worker_args = shlex.split(args.worker_args)
    args.profile = None  # what throughput.Bench reads of its plan
    args.fib_n = workloads.FIB_N
    if args.output is None:
        args.output = os.path.join(RESULTS_DIR, "cluster-quick.json" if args.quick
                                   else "cluster.json")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    plan = parse_args(argv)
    log_dir = tempfile.mkdtemp(prefix="jiggler-bench-cluster-")
    server: Optional[LocalServer] = None
    cluster: Optional[LocalCluster] = None
    targets: dict[str, Target] = {}
    failed = True
    began = time.perf_counter()
    try:
        server = LocalServer().start()
        cluster = LocalCluster(plan.masters).start()
        node_urls = [f"redis://127.0.0.1:{node.port}" for node in cluster.masters]
        targets[SINGLE] = Target(SINGLE, server.url, [server.url],
                                 os.path.join(log_dir, SINGLE), plan)
        targets[CLUSTER] = Target(CLUSTER, cluster.url, node_urls,
                                  os.path.join(log_dir, CLUSTER), plan,
                                  client=make_client(cluster.url), raw_url=node_urls[0])
        names = spread_queues(cluster, plan.queues)
        queues = placement(cluster, [DEFAULT_QUEUE, *names])
        machine = machine_info(targets[SINGLE].client, server.binary)
        machine["loadavg_before"] = loadavg()
        machine["loadavg_before_1m"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        print(f"server {machine['server']} at {server.url}; cluster at {cluster.url}; queues "
              + ", ".join(f"{n} -> node {v['node']}" for n, v in queues.items())
              + f"; logs in {log_dir}; load average {machine['loadavg_before']}", flush=True)
        data = run_all(targets, plan, names)
        machine["loadavg_after"] = loadavg()
        machine["loadavg_per_repeat"] = data["loadavg_per_repeat"]
        problems = [x for t in targets.values() for x in t.problems]
        notes = [x for t in targets.values() for x in t.notes]
        result: dict[str, Any] = {
            "when": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": time.perf_counter() - began,
            "machine": machine,
            "plan": {k: v for k, v in vars(plan).items() if k not in ("profile", "fib_n")},
            "queues": queues,
            "summary": summarize(data, plan.queues),
            "runs": data["runs"],
            "problems": problems,
            "notes": notes,
        }
        print()
        print(render(result))
        save_result(result, plan.output)
        failed = bool(problems)
        return 1 if failed else 0
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        for target in targets.values():
            target.cleanup()
        if cluster is not None:
            cluster.cleanup()
        if server is not None:
            server.cleanup()
        drop_logs(log_dir, keep=failed or plan.keep_logs)


if __name__ == "__main__":
    sys.exit(main())
