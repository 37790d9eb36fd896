"""Fixtures shared by every test folder (moto's S3 server)."""

pytest_plugins = ["tests.fixtures.s3"]
