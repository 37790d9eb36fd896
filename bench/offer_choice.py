"""Search-to-decision time: parse vast offer rows, then ``gpubot.offers.choose_rental``.

Input: ``gpubot.sim.market.generate_offers(seed, N)`` (the simulator's market), priced for the
template's disk with ``price_offer`` as the simulator's on-demand search does, parsed with
``gpubot.providers.vastai.parsing.offer_from_vast`` (the adapter's parser, row by row as
``search_offers`` does). Requirements and rental policy come from the built-in ``train``
template (``requirements_from``/``policy_from``) and, for comparison, an interactive box (no
template). For each market size and case: parse, filter + rank + re-check (``choose_rental``)
and their sum, as the median of ``--repeats`` runs, wall clock (``time.perf_counter``) and this
process's CPU (``time.process_time``, less disturbed by other load on a shared machine).
"""

from __future__ import annotations

import argparse
import os
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
    args = parser.parse_args()

    from gpubot.config import load_config
    from gpubot.models import InterruptibleMode
    from gpubot.offers import choose_rental, policy_from, requirements_from
    from gpubot.providers.vastai.parsing import offer_from_vast
    from gpubot.sim.market import DEFAULT_EPOCH, generate_offers, price_offer

    c.print_header(f"search to decision: parse + choose_rental (median of {args.repeats})")
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

    def ms(values: list[float]) -> str:
        return f"{c.median(values) * 1000:.2f}"

    rows: list[list[object]] = []
    for size in (int(s) for s in args.sizes.split(",")):
        raw = generate_offers(0, size, now=DEFAULT_EPOCH)
        for name, requirements, mode, policy in cases:
            vast_rows = [price_offer(o, allocated_storage_gb=requirements.disk_gb,
                                     offer_type="on-demand", now=DEFAULT_EPOCH) for o in raw]
            wall: dict[str, list[float]] = {"parse": [], "choose": [], "total": []}
            cpu: dict[str, list[float]] = {"parse": [], "choose": [], "total": []}
            choice = None
            for _ in range(args.repeats):
                w0, c0 = time.perf_counter(), time.process_time()
                offers = [offer_from_vast(r) for r in vast_rows]
                w1, c1 = time.perf_counter(), time.process_time()
                choice = choose_rental(
                    offers, requirements, mode=mode, expected_hours=policy.expected_hours,
                    checkpoints=policy.checkpoints, ranking=policy.ranking,
                )
                w2, c2 = time.perf_counter(), time.process_time()
                for d, a, b, z in ((wall, w0, w1, w2), (cpu, c0, c1, c2)):
                    d["parse"].append(b - a)
                    d["choose"].append(z - b)
                    d["total"].append(z - a)
            assert choice is not None
            rows.append([
                name, size, ms(wall["parse"]), ms(wall["choose"]), ms(wall["total"]),
                ms(cpu["parse"]), ms(cpu["choose"]), ms(cpu["total"]),
                f"{choice.offer.gpu_name} ${choice.price_per_hour_usd}/h "
                f"{choice.rental_type.value} (offer {choice.offer.offer_id})",
            ])
    print(c.table(["case", "offers", "parse ms", "choose ms", "total ms", "cpu parse",
                   "cpu choose", "cpu total", "pick"], rows))
    print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
