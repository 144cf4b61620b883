"""A small Flask app for the integration tests, written as an app factory.

``POST /greet/<key>`` enqueues a job; the job reads ``current_app.config`` and stores
its result in Redis; ``GET /result/<key>`` reads it back. Every app-context teardown
that follows a job bumps a counter, so the tests can see the cleanup ran.
"""

from __future__ import annotations

import os

import redis
from flask import Flask, current_app, g, jsonify, request

from jiggler_gevent import job
from jiggler_gevent.contrib.flask import Jiggler

jiggler = Jiggler()


def store() -> redis.Redis:
    return redis.Redis.from_url(current_app.config["JIGGLER_REDIS_URL"])


@job(name="flaskapp.greet", retries=0)
def greet(key: str, who: str) -> None:
    g.ran_job = key
    store().set(f"flaskapp:result:{key}", f"{current_app.config['GREETING']}, {who}")


def setup(app: Flask, greeting: str) -> Flask:
    app.config.update(JIGGLER_REDIS_URL=os.environ["FLASKAPP_REDIS_URL"], GREETING=greeting)

    @app.post("/greet/<key>")
    def start(key):
        return jsonify(jid=greet.enqueue(key, request.form["who"]))

    @app.get("/result/<key>")
    def result(key):
        value = store().get(f"flaskapp:result:{key}")
        return jsonify(result=value and value.decode())

    @app.teardown_appcontext
    def count_teardown(exc):
        if "ran_job" in g:
            store().incr("flaskapp:teardowns")

    return app


def create_app() -> Flask:
    app = setup(Flask("flaskapp"), "Hello")
    jiggler.init_app(app)
    return app
