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


class DbSleep(Job):
    """A slow query through the ORM's connection (PostgreSQL only)."""

    name = "djapp.db_sleep"

    def perform(self, seconds):
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(%s)", [seconds])
