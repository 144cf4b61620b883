"""Jobs of the test Django app (found by the worker as ``djapp.jobs``)."""

import os
import time

from jiggler_gevent import Job


class WriteRow(Job):
    name = "djapp.write_row"
    queue = "rows"

    def perform(self, n):
        time.sleep(0.02)  # cooperative: many greenlets hold a job (and a connection) at once
        from djapp.models import Row

        Row.objects.create(n=n, pid=os.getpid())
