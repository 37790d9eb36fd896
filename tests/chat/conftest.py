"""The SQLite-then-PostgreSQL database fixtures (tests/fixtures/postgres.py) for the chat
handler tests."""

from tests.fixtures.postgres import database_url, postgres_url

__all__ = ["database_url", "postgres_url"]
