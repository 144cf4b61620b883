"""Integrations with web frameworks: ``contrib.flask`` and ``contrib.django``.

Entry-point layer: each integration is built on the public client API and on
:mod:`jiggler_gevent.middleware`; nothing below imports from here.
"""
