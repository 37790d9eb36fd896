"""``python -m app …``: the same as the ``gpubot`` console script."""

from __future__ import annotations

from app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
