"""Settings of the test Django project: sqlite file from $DJPROJECT_DB (PostgreSQL on
127.0.0.1:$DJPROJECT_PG_PORT when that is set), Redis from
$DJPROJECT_REDIS_URL (given to the worker through JIGGLER_GEVENT)."""

import os

SECRET_KEY = "not-secret-test-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
INSTALLED_APPS = ["jiggler_gevent.contrib.django", "djapp"]
MIDDLEWARE = []
ROOT_URLCONF = "djproject.urls"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJPROJECT_DB", ":memory:"),
        "OPTIONS": {"timeout": 20},
    }
}
if os.environ.get("DJPROJECT_PG_PORT"):  # PostgreSQL instead (test_psycopg2.py)
    DATABASES["default"] = {
        "ENGINE": "django.db.backends.postgresql", "NAME": "postgres", "USER": "postgres",
        "HOST": "127.0.0.1", "PORT": os.environ["DJPROJECT_PG_PORT"],
    }
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
JIGGLER_GEVENT = {
    "redis_url": os.environ.get("DJPROJECT_REDIS_URL"),
    "queues": ["default", "rows"],
    "watchdog_threshold": 0,
}
