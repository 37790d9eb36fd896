"""Fixtures shared by every test folder (moto's S3 server)."""

import logging

pytest_plugins = ["tests.fixtures.s3"]

# moto's server logs every request at INFO; keep failure output readable.
logging.getLogger("werkzeug").setLevel(logging.WARNING)
logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)
