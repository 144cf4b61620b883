"""Flask integration: the ``Jiggler`` extension.

Owns reading ``JIGGLER_*`` keys from ``app.config`` and running every job inside the
app's application context in the worker (a server middleware), so ``current_app``,
``g`` and Flask-SQLAlchemy's scoped session work in jobs, and the context's teardown
(``app.do_teardown_appcontext``: Flask-SQLAlchemy removes its session there) runs
after every job, whether it succeeded or failed. Must not import gevent.

Both ways of writing an app work with the worker's ``-r``::

    # myapp.py: the module builds the app        ->  jiggler-gevent -r myapp
    app = Flask(__name__)
    app.config["JIGGLER_REDIS_URL"] = "redis://localhost:6379/0"
    jiggler = Jiggler(app)

    # myapp/__init__.py: an app factory          ->  jiggler-gevent -r myapp:create_app
    jiggler = Jiggler()

    def create_app():
        app = Flask(__name__)
        app.config.from_prefixed_env()
        jiggler.init_app(app)
        from . import jobs  # noqa: F401  (define or import the jobs)
        return app

Config keys (all optional): ``JIGGLER_REDIS_URL``, ``JIGGLER_NAMESPACE``,
``JIGGLER_MAX_CONNECTIONS`` (the client API's pool), ``JIGGLER_MIDDLEWARE`` (dotted
paths, see :func:`jiggler_gevent.middleware.load`) and ``JIGGLER_PERIODIC`` (a list
of schedules, see :func:`jiggler_gevent.periodic.load_config`). A worker given no
``--redis-url``/``--namespace`` of its own follows these (``cli.follow_the_app``); one
given its own keeps them and warns when the app's differ.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from .. import middleware, periodic
from ..connection import configure, settings

MIDDLEWARE_KEY = "jiggler_gevent.contrib.flask"
EXTENSION_NAME = "jiggler_gevent"


class AppContext:
    """Server middleware: run the job inside ``app.app_context()``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, job: Any, payload: dict, call_next: Callable[[], Any]) -> Any:
        with self.app.app_context():  # its pop runs the teardown functions, with the error
            return call_next()


class Jiggler:
    """The Flask extension; ``Jiggler(app)`` or ``Jiggler()`` then ``init_app(app)``.

    In a worker process one app is in charge: the last one passed to ``init_app``.
    """

    def __init__(self, app: Optional[Any] = None) -> None:
        self.app = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Any) -> None:
        config = app.config
        options: dict = {}
        url = config.get("JIGGLER_REDIS_URL")
        if url and url != settings.redis_url:
            options["redis_url"] = url
        if "JIGGLER_NAMESPACE" in config and config["JIGGLER_NAMESPACE"] != settings.keys.namespace:
            options["namespace"] = config["JIGGLER_NAMESPACE"]
        if config.get("JIGGLER_MAX_CONNECTIONS"):
            options["max_connections"] = int(config["JIGGLER_MAX_CONNECTIONS"])
        if options:
            configure(**options)
        periodic.load_config(config.get("JIGGLER_PERIODIC") or ())
        middleware.add_server(AppContext(app), key=MIDDLEWARE_KEY)  # outermost: the rest
        middleware.load(config.get("JIGGLER_MIDDLEWARE"))  # runs inside the app context
        app.extensions[EXTENSION_NAME] = self
        self.app = app
