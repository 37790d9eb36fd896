"""The vast.ai-compatible marketplace simulator (HTTP API + a real SSH server per instance).

Entry points: :class:`gpubot.sim.server.SimServer`, :func:`gpubot.sim.server.main`
(``gpubot sim``), :class:`gpubot.sim.control.SimControl`, and
:func:`gpubot.sim.market.generate_offers` (realistic offers for tests). See docs/simulator.md.
"""
