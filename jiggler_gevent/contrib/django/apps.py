"""The Django app config: configures the client API from ``JIGGLER_GEVENT`` settings."""

from __future__ import annotations

from django.apps import AppConfig

from ... import periodic
from ...connection import configure
from . import jiggler_settings


class JigglerGeventConfig(AppConfig):
    name = "jiggler_gevent.contrib.django"
    label = "jiggler_gevent"
    verbose_name = "jiggler-gevent"

    def ready(self) -> None:
        conf = jiggler_settings()
        options = {key: conf[key] for key in ("redis_url", "namespace") if conf.get(key)}
        if options:
            configure(**options)
        periodic.load_config(conf.get("periodic") or ())
