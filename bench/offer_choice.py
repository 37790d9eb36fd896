"""Offer choice time over 10,000 offers: the pure ``gpubot.offers.choose_rental``.

Input: ``gpubot.sim.market.generate_offers(seed, 10000)`` (the simulator's market), priced for
the template's disk with ``price_offer`` as the simulator's search does, parsed with
``gpubot.providers.vastai.parsing.offer_from_vast`` (the adapter's parser). Requirements and
rental policy come from the built-in ``train`` template (``requirements_from``/``policy_from``)
and, for comparison, an interactive box (no template). Parsing is timed separately. Median of
``--repeats`` runs with ``time.perf_counter``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

c.setup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offers", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()

    from gpubot.config import load_config
    from gpubot.models import InterruptibleMode
    from gpubot.offers import choose_rental, policy_from, requirements_from
    from gpubot.providers.vastai.parsing import offer_from_vast
    from gpubot.sim.market import DEFAULT_EPOCH, generate_offers, price_offer

    c.print_header(f"offer choice over {args.offers} offers (median of {args.repeats})")
    config = load_config(None)
    train = config.templates["train"]

    t0 = time.perf_counter()
    raw = generate_offers(0, args.offers, now=DEFAULT_EPOCH)
    gen_s = time.perf_counter() - t0
    rows_od = [price_offer(o, allocated_storage_gb=train.disk_gb, offer_type="on-demand",
                           now=DEFAULT_EPOCH) for o in raw]
    parse_times: list[float] = []
    offers = []
    for _ in range(max(3, args.repeats // 4)):
        t0 = time.perf_counter()
        offers = [offer_from_vast(r) for r in rows_od]
        parse_times.append(time.perf_counter() - t0)

    cases = []
    req = requirements_from(train)
    pol = policy_from(train)
    cases.append(("train template, interruptible=auto", req, pol.mode, pol))
    cases.append(("train template, interruptible=no", req, InterruptibleMode.NO, pol))
    box_req = requirements_from(None)
    box_pol = policy_from(None)
    cases.append(("rent (no template), auto", box_req, box_pol.mode, box_pol))

    rows: list[list[object]] = []
    for name, requirements, mode, policy in cases:
        times: list[float] = []
        choice = None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            choice = choose_rental(
                offers, requirements, mode=mode, expected_hours=policy.expected_hours,
                checkpoints=policy.checkpoints, ranking=policy.ranking,
            )
            times.append(time.perf_counter() - t0)
        assert choice is not None
        rows.append([
            name, len(offers), f"{c.median(times) * 1000:.1f}", f"{min(times) * 1000:.1f}",
            f"{max(times) * 1000:.1f}",
            f"{choice.offer.gpu_name} ${choice.price_per_hour_usd}/h {choice.rental_type.value}",
        ])
    print(c.table(["case", "offers", "median ms", "min ms", "max ms", "pick"], rows))
    print(f"generate_offers: {gen_s * 1000:.0f} ms; offer_from_vast x{len(offers)}: "
          f"median {c.median(parse_times) * 1000:.0f} ms (not part of choose_rental).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
