"""Fakes-backed EngineDeps for these tests (see tests/fixtures/fake_deps.py), and the
SQLite-then-PostgreSQL database fixtures (tests/fixtures/postgres.py)."""

from tests.fixtures.fake_deps import OPS_CHANNEL, clock, deps, ops_channel, provider
from tests.fixtures.postgres import database_url, postgres_url

__all__ = [
    "OPS_CHANNEL", "clock", "database_url", "deps", "ops_channel", "postgres_url", "provider",
]
