"""End to end: ``-p N`` runs N worker processes, restarts one that dies, stops together."""

from __future__ import annotations

import os
import signal
import time

from jiggler_gevent.keys import Keys

from . import jobs_fixture as jf
from .procs import wait_until

KEYS = Keys()


def child_pids(client) -> set[int]:
    pids = set()
    for identity in client.zrange(KEYS.processes, 0, -1):
        pid = client.hget(KEYS.process(identity.decode()), "pid")
        if pid is not None:
            pids.add(int(pid))
    return pids


def kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_processes_share_the_work_and_a_dead_one_is_replaced(redis_client, spawn_worker, ledger,
                                                             report):
    seen: set[int] = set()
    parent = spawn_worker("-p", "3", "-c", "5", "--stats-interval", "0.3",
                          "--requeue-interval", "0.3")
    try:
        wait_until(lambda: len(child_pids(redis_client)) == 3, 20, "3 heartbeats", parent)
        first = child_pids(redis_client)
        seen |= first
        assert parent.pid not in first

        jids = jf.Record.enqueue_bulk([[0.02] for _ in range(600)])
        wait_until(lambda: len(ledger.ended()) >= 100, 20, "jobs to start", parent)
        victim = sorted(first)[0]
        os.kill(victim, signal.SIGKILL)
        time.sleep(0.2)
        entries = ledger.entries()
        ended_by_victim = {j for j, pid, kind, _ in entries if pid == victim and kind == "end"}
        in_flight = len({j for j, pid, kind, _ in entries
                         if pid == victim and kind == "start" and j not in ended_by_victim})
        wait_until(lambda: len(ledger.ended()) >= len(jids), 40, "every job to end", parent)
        wait_until(lambda: len(child_pids(redis_client) - {victim}) == 3, 20, "a replacement",
                   parent)
        seen |= child_pids(redis_client)
        assert len(seen) == 4, "the killed process was replaced by a new one"

        lost, dup = ledger.lost_and_dup(jids)
        report("-p 3, one child SIGKILLed", lost, dup, len(jids), in_flight)
        assert lost == 0 and dup <= in_flight
        pids_by_job = {pid for _, pid, _, _ in ledger.entries()}
        assert len(pids_by_job & first) >= 2, "the work was spread over the processes"

        parent.send(signal.SIGTERM)
        parent.wait_exit(30)
        assert parent.returncode == 0, parent.tail()
        wait_until(lambda: not child_pids(redis_client), 10, "children to deregister")
        assert list(redis_client.scan_iter(match="*:in_progress:*")) == []
    finally:
        parent.kill()
        kill_all(seen)


def test_ten_processes_move_each_scheduled_job_once(redis_client, spawn_worker, ledger):
    parent = spawn_worker("-p", "10", "-c", "2", "--poll-interval", "0.1",
                          "--stats-interval", "0.5")
    pids: set[int] = set()
    try:
        wait_until(lambda: len(child_pids(redis_client)) == 10, 30, "10 heartbeats", parent)
        pids = child_pids(redis_client)
        at = time.time() + 1.5
        jids = [jf.Record.enqueue_at(at) for _ in range(500)]
        wait_until(lambda: len(ledger.ended()) >= len(jids), 30, "every job to end", parent)
        time.sleep(0.5)
        starts, ends = ledger.counts()
        assert all(starts[j] == 1 and ends[j] == 1 for j in jids)
        parent.send(signal.SIGTERM)
        parent.wait_exit(30)
        assert parent.returncode == 0, parent.tail()
    finally:
        parent.kill()
        kill_all(pids)


def test_a_killed_parent_takes_its_children_down(redis_client, spawn_worker):
    parent = spawn_worker("-p", "2", "-c", "2", "--stats-interval", "0.3")
    pids: set[int] = set()
    try:
        wait_until(lambda: len(child_pids(redis_client)) == 2, 20, "2 heartbeats", parent)
        pids = child_pids(redis_client)
        parent.proc.kill()  # SIGKILL: no chance to forward anything
        parent.proc.wait(10)

        def gone() -> bool:
            for pid in pids:
                try:
                    os.kill(pid, 0)
                    return False
                except ProcessLookupError:
                    continue
            return True

        wait_until(gone, 20, "the children to stop after their parent died")
        assert redis_client.zcard(KEYS.processes) == 0, "they stopped cleanly (heartbeats removed)"
    finally:
        kill_all(pids)
