"""The same app written the other way: this module builds it at import
(``jiggler-gevent -r flaskapp_module``), the extension takes it in its constructor."""

from flask import Flask
from flaskapp import setup

from jiggler_gevent.contrib.flask import Jiggler

app = setup(Flask("flaskapp_module"), "Bonjour")
jiggler = Jiggler(app)
