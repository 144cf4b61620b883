"""Django integration: an installable app, a worker management command, DB hygiene.

Add ``"jiggler_gevent.contrib.django"`` to ``INSTALLED_APPS`` and, optionally::

    JIGGLER_GEVENT = {
        "redis_url": "redis://localhost:6379/0",   # any worker option, by its long name
        "namespace": "myapp",
        "queues": ["default", "mail"],
        "concurrency": 50,
        "middleware": ["myproject.middleware:RequestId"],
        "periodic": [{"job": "myapp.jobs.Cleanup", "cron": "0 3 * * *", "tz": "Europe/Paris"}],
    }

Web processes enqueue with the settings' ``redis_url``/``namespace`` (configured in
``AppConfig.ready``). ``python manage.py jiggler_gevent [worker options]`` runs a
worker: see ``management/commands/jiggler_gevent.py`` for how it monkey-patches first,
and ``boot.py`` for what the worker does at start (``django.setup()``, each installed
app's ``jobs`` module, database connections closed around every job).
"""

SETTINGS_NAME = "JIGGLER_GEVENT"


def jiggler_settings() -> dict:
    """The ``JIGGLER_GEVENT`` setting (an empty dict when unset)."""
    from django.conf import settings

    value = getattr(settings, SETTINGS_NAME, None) or {}
    if not isinstance(value, dict):
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(f"{SETTINGS_NAME} must be a dict, not {type(value).__name__}")
    return value
