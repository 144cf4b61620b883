"""The web dashboard: a WSGI app over the admin API (needs the ``web`` extra, Jinja2).

Mount :class:`Dashboard` under any prefix (links follow ``SCRIPT_NAME``)::

    from jiggler_gevent.web import Dashboard
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    flask_app.wsgi_app = DispatcherMiddleware(
        flask_app.wsgi_app, {"/jiggler": Dashboard(redis_url=..., namespace=...)})

or run it on its own with ``jiggler-gevent web --port 9292 [--basic-auth user:pass]``.
Must not import gevent (the standalone command patches before importing this).
"""

from .app import BasicAuth, Dashboard, make_app

__all__ = ["BasicAuth", "Dashboard", "make_app"]
