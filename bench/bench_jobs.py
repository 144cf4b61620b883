"""Jobs for the benchmarks in bench/: load with ``jiggler-gevent -r bench/bench_jobs.py``.

``Noop`` does nothing, so a run measures only the job system's own cost per job.
"""

from __future__ import annotations

from jiggler_gevent import Job


class Noop(Job):
    """A job whose ``perform`` is ``pass``."""

    name = "bench.noop"

    def perform(self, *args):
        pass
