"""Search-to-decision time: vast offer rows to ``gpubot.offers.choose_rental``'s choice.

Input: ``gpubot.sim.market.generate_offers(seed, N)`` (the simulator's market), priced for the
template's disk with ``price_offer`` as the simulator's on-demand search does. Requirements and
rental policy come from the built-in ``train`` template (``requirements_from``/``policy_from``)
and, for comparison, an interactive box (no template). Two paths over the same rows:

* ``parsed``: every row parsed with ``offer_from_vast`` into a list (what ``search_offers``
  returned before), then ``choose_rental`` on the list;
* ``screened``: ``VastOffers(rows)`` (what ``search_offers`` returns now), then
  ``choose_rental``, which screens the raw rows and parses only the winner.

For each market size, case and path: the first step (parse, or wrapping the rows), the choice
and their sum, as the median of ``--repeats`` runs of this process's CPU time
(``time.process_time``, less disturbed by other load on a shared machine), and the total's wall
clock (``time.perf_counter``). The two paths must pick the same offer (checked). ``--profile``
prints cProfile's top entries for one screened run at the largest size.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

c.setup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="300,10000", help="market sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--profile", action="store_true",
                        help="cProfile one screened run per case at the largest size")
    args = parser.parse_args()

    from gpubot.config import load_config
    from gpubot.models import InterruptibleMode
    from gpubot.offers import choose_rental, policy_from, requirements_from
    from gpubot.providers.vastai.parsing import VastOffers, offer_from_vast
    from gpubot.sim.market import DEFAULT_EPOCH, generate_offers, price_offer

    c.print_header(f"search to decision: rows -> choose_rental (median of {args.repeats})")
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    config = load_config(None)
    train = config.templates["train"]
    req, pol = requirements_from(train), policy_from(train)
    box_req, box_pol = requirements_from(None), policy_from(None)
    cases = [
        ("train, interruptible=auto", req, pol.mode, pol),
        ("train, interruptible=no", req, InterruptibleMode.NO, pol),
        ("rent (no template), auto", box_req, box_pol.mode, box_pol),
    ]
    paths = {
        "parsed": lambda rows: [offer_from_vast(r) for r in rows],
        "screened": VastOffers,
    }

    def ms(values: list[float]) -> str:
        return f"{c.median(values) * 1000:.2f}"

    sizes = [int(s) for s in args.sizes.split(",")]
    table: list[list[object]] = []
    profiles: list[str] = []
    for size in sizes:
        raw = generate_offers(0, size, now=DEFAULT_EPOCH)
        for name, requirements, mode, policy in cases:
            vast_rows = [price_offer(o, allocated_storage_gb=requirements.disk_gb,
                                     offer_type="on-demand", now=DEFAULT_EPOCH) for o in raw]

            def decide(market: object, requirements: object = requirements,
                       mode: object = mode, policy: object = policy) -> object:
                return choose_rental(
                    market, requirements, mode=mode,  # type: ignore[arg-type]
                    expected_hours=policy.expected_hours,  # type: ignore[attr-defined]
                    checkpoints=policy.checkpoints,  # type: ignore[attr-defined]
                    ranking=policy.ranking,  # type: ignore[attr-defined]
                )

            picks: dict[str, str] = {}
            for path, build in paths.items():
                wall: list[float] = []
                cpu: dict[str, list[float]] = {"first": [], "choose": [], "total": []}
                choice = None
                for _ in range(args.repeats):
                    w0, c0 = time.perf_counter(), time.process_time()
                    market = build(vast_rows)
                    c1 = time.process_time()
                    choice = decide(market)
                    w2, c2 = time.perf_counter(), time.process_time()
                    wall.append(w2 - w0)
                    cpu["first"].append(c1 - c0)
                    cpu["choose"].append(c2 - c1)
                    cpu["total"].append(c2 - c0)
                assert choice is not None
                picks[path] = (
                    f"{choice.offer.gpu_name} ${choice.price_per_hour_usd}/h "  # type: ignore[attr-defined]
                    f"{choice.rental_type.value} (offer {choice.offer.offer_id})"  # type: ignore[attr-defined]
                )
                table.append([name, size, path, ms(cpu["first"]), ms(cpu["choose"]),
                              ms(cpu["total"]), ms(wall), picks[path]])
            assert picks["parsed"] == picks["screened"], picks
            if args.profile and size == max(sizes):
                profiler = cProfile.Profile()
                profiler.enable()
                decide(VastOffers(vast_rows))
                profiler.disable()
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(8)
                profiles.append(f"-- {name}, {size} offers, screened\n{out.getvalue()}")
    print(c.table(["case", "offers", "path", "cpu parse/wrap", "cpu choose", "cpu total",
                   "wall total", "pick"], table))
    print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    for text in profiles:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
