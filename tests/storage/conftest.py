"""moto server fixtures for the storage tests."""

from tests.fixtures.s3 import moto_endpoint, s3_env, s3_store  # noqa: F401
