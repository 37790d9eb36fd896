"""The composition root: every process's entry point, and the only place the parts meet.

``app`` wires the core (``gpubot``), the Slack surface (``bot``), the Celery workers
(``workers``) and the simulator (``gpubot.sim``) into processes:

- :mod:`app.cli` — the ``gpubot`` command line (console script ``gpubot = "app.cli:main"``);
- :mod:`app.serve` — ``gpubot serve``: the Bolt app with a ``CeleryKicker`` as its enqueuer;
- :mod:`app.worker` — ``gpubot worker`` / ``gpubot beat`` and the ``celery -A app.worker``
  target; installs the Slack deliverer factory into ``workers.runtime`` at import;
- :mod:`app.chat` — ``gpubot chat``: the terminal front on the same engine;
- :mod:`app.demo` — ``gpubot demo``: everything in one process on embedded defaults.

Import rules (enforced by ``tests/test_import_rules.py``): nothing outside ``app`` imports it
(except the ``python -m bot`` launcher), ``gpubot`` never imports ``bot``, ``workers`` or
``app``, and ``bot`` and ``workers`` never import each other.
"""
