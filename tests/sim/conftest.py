"""Simulator fixtures (defined in tests/fixtures/sim.py so other folders can reuse them)."""

from tests.fixtures.sim import sim, ssh_key, vast

__all__ = ["sim", "ssh_key", "vast"]
