"""Fixtures of the fault suite: the e2e harness (``spawn_worker``, ``ledger``,
``report``) and a :class:`~faults.harness.Fleet` on top of it."""

from __future__ import annotations

import pytest

# the end-to-end harness, reused as is (tests/ is on sys.path: tests/e2e is ``e2e``)
from e2e.conftest import ledger, report, spawn_worker  # noqa: F401

from .harness import Fleet


@pytest.fixture
def fleet(spawn_worker, ledger, redis_client, tmp_path):  # noqa: F811
    """Worker processes of this test; every one still running is killed at the end."""
    fleet = Fleet(spawn_worker, ledger, redis_client, tmp_path / "notes.txt")
    try:
        yield fleet
    finally:
        fleet.kill_all()
