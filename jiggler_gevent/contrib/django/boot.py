"""What a Django worker imports first (``-r jiggler_gevent.contrib.django.boot``).

Runs after gevent has monkey-patched (the management command saw to that): sets
Django up, imports every installed app's ``jobs`` module (that is where jobs are
found), and adds :func:`close_connections` as the outermost server middleware.

Why close connections around every job, as Celery does: Django keeps one connection
per thread, which under gevent means one per greenlet. Without a request cycle
nothing would ever close them, so 100 worker greenlets would each keep one open for
ever, including connections broken by a failed job or past ``CONN_MAX_AGE``.
``close_old_connections`` before and after each job closes the ones that are
unusable or too old, in the greenlet that owns them; greenlets never share one.
"""

from __future__ import annotations

from typing import Any, Callable

import django
from django.db import close_old_connections
from django.utils.module_loading import autodiscover_modules

from ... import middleware

MIDDLEWARE_KEY = "jiggler_gevent.contrib.django"


def close_connections(job: Any, payload: dict, call_next: Callable[[], Any]) -> Any:
    """Server middleware: recycle this greenlet's DB connections around the job."""
    close_old_connections()
    try:
        return call_next()
    finally:
        close_old_connections()


def boot() -> None:
    django.setup()
    autodiscover_modules("jobs")
    middleware.add_server(close_connections, key=MIDDLEWARE_KEY)
    from . import jiggler_settings

    middleware.load(jiggler_settings().get("middleware"))


boot()
