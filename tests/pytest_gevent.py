"""Run the test suite under gevent's monkey-patching, as the worker runs.

Like Dramatiq's ``pytest-gevent.py``: patch first, before pytest (or anything that
might import ``socket``, ``threading`` or ``ssl``) is imported, then hand the command
line to pytest and exit with its status::

    .venv/bin/python tests/pytest_gevent.py -q -k scripts
"""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

import pytest  # noqa: E402

if __name__ == "__main__":
    sys.exit(pytest.main(sys.argv[1:]))
