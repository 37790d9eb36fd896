"""Real sshd and moto server fixtures for the remote tests."""

from tests.fixtures.s3 import moto_endpoint, s3_env, s3_store  # noqa: F401
from tests.fixtures.sshd import sshd  # noqa: F401
