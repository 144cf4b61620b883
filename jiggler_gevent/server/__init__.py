"""The worker process: everything that runs on gevent.

Nothing outside this package (and the CLI that starts it) imports gevent. The parts,
in the order a job meets them: :mod:`.fetcher` (reserve jobs, the unit of work),
:mod:`.worker` (run one job; the ack rule), :mod:`.retrier` (failed -> retry or dead
set), :mod:`.acker` (batched acknowledgements), :mod:`.poller` (scheduled and retry
sets -> queues), :mod:`.monitor` (heartbeat and counters), :mod:`.manager` (the pool
of worker greenlets, shutdown) and :mod:`.launcher` (wires them, signals).
"""
