"""Fakes-backed EngineDeps for these tests (see tests/fixtures/fake_deps.py)."""

from tests.fixtures.fake_deps import OPS_CHANNEL, clock, deps, ops_channel, provider

__all__ = ["OPS_CHANNEL", "clock", "deps", "ops_channel", "provider"]
