"""vast.ai API calls per reconcile tick at 10, 100 and 1000 instances.

Setup: the simulator (``SimServer``, frozen clock so instances stay provisioning and no
per-instance SSH server starts) holds N instances labelled ``gpubot:<job>``; a SQLite database
holds N jobs in ``running`` with their instance rows. The tick is the real
``gpubot.engine.tick.reconcile_tick`` with the real ``VastAIProvider`` (official vastai
SDK) and a no-op dispatch (the job steps of ``running`` use SSH, not the vast API).

Counted: every HTTP request reaching the simulator during the tick (wrapping its WSGI
dispatch), by endpoint; and the provider methods called. A plain tick and a tick with the
orphan sweep (every ``[engine] sweep_every_ticks`` ticks) are measured separately.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

c.setup()


class CountingProvider:
    """Wraps a provider and counts method calls by name."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attr(*args, **kwargs)

        return wrapped


def endpoint(method: str, path: str) -> str:
    return f"{method} " + re.sub(r"/\d+", "/{id}", path.rstrip("/"))


def measure(n: int, tmp: Path) -> list[list[object]]:
    from gpubot.db.engine import session_scope
    from gpubot.engine.tick import reconcile_tick
    from gpubot.models import JobState
    from gpubot.providers.vastai.provider import VastAIProvider
    from gpubot.sim.server import SimServer
    from gpubot.testing.fakes import FakeClock, fake_deps, seed_instance, seed_job

    sim = SimServer(home=tmp / f"sim{n}", speed=0.0, offer_count=max(300, n + 50)).start()
    try:
        engine = sim.engine
        assert engine is not None and sim.app is not None
        offer_ids = sorted(engine.offers)[:n]
        ids: list[str] = []
        save = engine._save
        engine._save = lambda: None  # type: ignore[method-assign]  # seeding: save once
        try:
            for i, offer_id in enumerate(offer_ids):
                reply = engine.create(offer_id, {"label": f"gpubot:job{i:05d}", "disk": 10})
                ids.append(str(reply["new_contract"]))
        finally:
            engine._save = save  # type: ignore[method-assign]
        save()

        counter: Counter[str] = Counter()
        lock = threading.Lock()
        inner = sim.app.dispatch

        def counting_dispatch(request: Any) -> Any:
            with lock:
                counter[endpoint(request.method, request.path)] += 1
            return inner(request)

        sim.app.dispatch = counting_dispatch  # type: ignore[method-assign]

        clock = FakeClock()
        deps = fake_deps(tmp / f"home{n}", clock=clock)
        provider = CountingProvider(VastAIProvider(api_key=sim.api_key, server_url=sim.url))
        deps.provider = provider  # type: ignore[assignment]
        with session_scope(deps.sessions) as session:
            for i, pid in enumerate(ids):
                job_id = f"job{i:05d}"
                seed_job(session, job_id, state=JobState.RUNNING, created_at=clock())
                seed_instance(session, job_id, pid, label=f"gpubot:{job_id}",
                              price_per_hour_usd="0.40", created_at=clock())
        c.quiet()

        rows: list[list[object]] = []
        for sweep in (False, True):
            clock.advance(seconds=10)
            counter.clear()
            provider.calls.clear()
            started = time.perf_counter()
            report = reconcile_tick(deps, dispatch=lambda job_id, token: None, sweep=sweep)
            wall = time.perf_counter() - started
            total = sum(counter.values())
            detail = ", ".join(f"{k} x{v}" for k, v in sorted(counter.items()))
            methods = ", ".join(f"{k}()x{v}" for k, v in sorted(provider.calls.items()))
            rows.append([
                n, "tick + sweep" if sweep else "tick", report.instances_seen, total,
                f"{total / n:.3f}", methods, detail, f"{wall:.2f}",
            ])
        deps.sessions.kw["bind"].dispose()
        return rows
    finally:
        sim.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    c.print_header("vast.ai API calls per reconcile tick (real VastAIProvider -> simulator)")
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="gpubot-bench-api-") as tmp:
        for n in sizes:
            rows += measure(n, Path(tmp))
    print(c.table(
        ["instances", "tick", "listed", "HTTP calls", "calls/instance", "provider methods",
         "endpoints", "wall s"],
        rows,
    ))
    print("Expected from the design: ceil(N/25) listing pages per tick, nothing per instance.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
