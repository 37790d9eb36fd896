"""PNG charts for Slack threads and reports (matplotlib, Agg backend; no display needed).

Both functions write the file and return its path; the parent folder is created.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

_lock = threading.Lock()
"""pyplot keeps global state; draw one chart at a time."""


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def loss_chart_png(points: Sequence[tuple[int, float]], path: str | Path) -> Path:
    """Draw loss over steps to ``path`` (PNG). ``points`` are ``(step, loss)``; may be empty."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _lock:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
        try:
            if points:
                steps = [int(p[0]) for p in points]
                losses = [float(p[1]) for p in points]
                ax.plot(steps, losses, color="#1f77b4", linewidth=1.5)
            else:
                ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlabel("step")
            ax.set_ylabel("loss")
            ax.grid(True, alpha=0.3)
            fig.tight_layout()
            fig.savefig(out, format="png")
        finally:
            plt.close(fig)
    return out


def spend_chart_png(rows: Sequence[tuple[str, Decimal | float]], path: str | Path) -> Path:
    """Horizontal bars of spend in USD per label to ``path`` (PNG). ``rows``: (label, usd)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _lock:
        plt = _pyplot()
        height = max(2.0, 0.4 * len(rows) + 1.0)
        fig, ax = plt.subplots(figsize=(6, height), dpi=100)
        try:
            labels = [str(r[0]) for r in rows]
            values = [float(r[1]) for r in rows]
            ax.barh(labels, values, color="#2ca02c")
            ax.invert_yaxis()
            ax.set_xlabel("USD")
            ax.grid(True, axis="x", alpha=0.3)
            fig.tight_layout()
            fig.savefig(out, format="png")
        finally:
            plt.close(fig)
    return out
