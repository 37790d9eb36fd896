"""``python -m bot``: a launcher for ``gpubot serve`` (the wiring lives in ``app.serve``).

The one module of ``bot/`` allowed to import the composition root: it is an entry point,
not library code (``tests/test_import_rules.py``).
"""

from __future__ import annotations

from app.serve import main

if __name__ == "__main__":
    raise SystemExit(main())
