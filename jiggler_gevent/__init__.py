"""jiggler-gevent: background jobs for synchronous Python on gevent and Redis.

This package's top level is the client API that web handlers use to define and
enqueue jobs. Importing it never imports gevent and never monkey-patches: only the
``jiggler-gevent`` worker command does that, before anything else runs.
"""

from .connection import configure
from .errors import (
    ConfigError,
    EnqueueError,
    JigglerError,
    JobDefinitionError,
    JobTimeout,
    PayloadError,
    RedisUnavailable,
    Shutdown,
    UnknownJobError,
)
from .job import Enqueuer, Job, job
from .version import __version__

__all__ = [
    "ConfigError",
    "EnqueueError",
    "Enqueuer",
    "JigglerError",
    "Job",
    "JobDefinitionError",
    "JobTimeout",
    "PayloadError",
    "RedisUnavailable",
    "Shutdown",
    "UnknownJobError",
    "__version__",
    "configure",
    "job",
]
