"""A simulated month: 1000 jobs, 10 % preempted, 5 % stuck, 2 % forgotten rentals.

A discrete-event MODEL, not a run of the engine: each job is a sequence of events (rent,
boot, setup, work, preemption, stall, idle, destroy) on a seeded random timeline, and the
decisions are taken by the project's real pure policy code:

- offers and prices: ``gpubot.offers.choose_rental`` on the simulator's market
  (``gpubot.sim.market.generate_offers``, a new market every day), with the built-in ``train``
  template for jobs and no template for ``/gpu rent`` boxes;
- money: ``gpubot.costs.compute_cost_usd`` (while running) and ``storage_cost_usd`` (from
  rent to destroy request), like the reconcile tick's meter; the $20 default job cap with
  ``costs.budget_verdict``;
- idle/stuck: ``[idle]`` thresholds from the built-in config (``window_minutes``,
  ``grace_minutes``; the stuck window and its proportional grace from
  ``gpubot.engine.idle.stuck_window``/``stuck_grace``), evaluated at tick boundaries
  (``GPUBOT_TICK_SECONDS`` default);
- preemption: the engine's resume rule (``_step_interrupted``): re-rent while the job has
  used fewer than ``[engine] max_attempts`` rentals, resuming from the newest checkpoint;
  after that the job fails.

ASSUMPTIONS (not measured anywhere; change them with the flags): work time lognormal with a
1.5 h median (5 min - 12 h); boot 3-8 min (storage billed, no compute); setup 2-5 min; restore
1-3 min; collection 1 min; checkpoint every 10 min of work; a resumed rental is preempted
again with probability 0.2; a forgotten box was used 0.5-4 h first. "Waste" is compute and
storage bought after the work stopped being useful: redone work + re-setup/restore after a
preemption, the whole spend of a job that ran out of attempts, the stalled period of a stuck
job, idle time of a forgotten box, and the lag between a job's exit and the destroy.

The "manual" column applies the same timeline to hand-run rentals with guessed human reaction
times (forgotten box found after 16 h, stuck job after 8 h, preemption noticed after 2 h and
resumed by hand, finished instance destroyed 0-2 h after exit). It is illustrative only.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

c.setup()

H = 3600.0
M = 60.0


@dataclass
class Tally:
    spend: Decimal = Decimal(0)
    waste: dict[str, Decimal] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)

    def add_waste(self, kind: str, amount: Decimal) -> None:
        self.waste[kind] = self.waste.get(kind, Decimal(0)) + amount

    def bump(self, kind: str) -> None:
        self.count[kind] = self.count.get(kind, 0) + 1


@dataclass(frozen=True)
class Rental:
    price: Decimal
    """$/h compute (the bid for interruptible)."""
    storage: Decimal
    """$/GB/month."""
    disk_gb: int
    interruptible: bool


def cost(r: Rental, compute_s: float, life_s: float) -> Decimal:
    from gpubot import costs

    return costs.compute_cost_usd(r.price, max(0.0, compute_s)) + costs.storage_cost_usd(
        r.storage, r.disk_gb, max(0.0, life_s)
    )


def next_tick(t: float, tick: float, phase: float) -> float:
    """The first tick at or after ``t`` (ticks at phase + k * tick)."""
    return phase + math.ceil((t - phase) / tick) * tick


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--preempted", type=float, default=0.10)
    parser.add_argument("--stuck", type=float, default=0.05)
    parser.add_argument("--forgotten", type=float, default=0.02)
    parser.add_argument("--checkpoint-minutes", type=float, default=10.0)
    parser.add_argument("--repreempt", type=float, default=0.2)
    args = parser.parse_args()

    from gpubot import costs
    from gpubot.config import load_config
    from gpubot.engine.idle import stuck_grace, stuck_window
    from gpubot.errors import NoOfferError
    from gpubot.models import RentalType
    from gpubot.offers import choose_rental, policy_from, requirements_from
    from gpubot.providers.vastai.parsing import offer_from_vast
    from gpubot.settings import Settings
    from gpubot.sim.market import DEFAULT_EPOCH, generate_offers, price_offer

    config = load_config(None)
    idle = config.idle
    # the job's cadence is not modelled: the stuck window is its floor, the grace proportional
    stuck_window_s = stuck_window(idle, None).total_seconds()
    stuck_grace_s = stuck_grace(idle, stuck_window(idle, None)).total_seconds()
    max_attempts = config.engine.max_attempts
    tick = float(Settings.model_fields["tick_seconds"].default)
    job_cap = Decimal(str(config.budgets.job_default_usd))
    train = config.templates["train"]
    rng = random.Random(args.seed)

    def market(day: int, disk_gb: int) -> list:
        raw = generate_offers(1000 + day, 300, now=DEFAULT_EPOCH)
        return [offer_from_vast(price_offer(o, allocated_storage_gb=disk_gb,
                                            offer_type="on-demand", now=DEFAULT_EPOCH))
                for o in raw]

    def rental_for(day: int, template: object | None) -> Rental:
        req = requirements_from(template)  # type: ignore[arg-type]
        pol = policy_from(template)  # type: ignore[arg-type]
        offers = markets.setdefault((day, req.disk_gb), market(day, req.disk_gb))
        try:
            ch = choose_rental(offers, req, mode=pol.mode, expected_hours=pol.expected_hours,
                               checkpoints=pol.checkpoints, ranking=pol.ranking)
        except NoOfferError:
            ch = choose_rental(market(day + 500, req.disk_gb), req, mode=pol.mode,
                               expected_hours=pol.expected_hours,
                               checkpoints=pol.checkpoints, ranking=pol.ranking)
        return Rental(ch.price_per_hour_usd, ch.offer.storage_per_gb_month_usd, req.disk_gb,
                      ch.rental_type is RentalType.INTERRUPTIBLE)

    markets: dict[tuple[int, int], list] = {}
    n = args.jobs
    kinds = (["forgotten"] * round(n * args.forgotten) + ["stuck"] * round(n * args.stuck)
             + ["preempted"] * round(n * args.preempted))
    kinds += ["normal"] * (n - len(kinds))
    rng.shuffle(kinds)

    bot, manual = Tally(), Tally()
    capped = 0
    failed_attempts = 0
    ckpt = args.checkpoint_minutes * M
    for kind in kinds:
        day = rng.randrange(30)
        phase = rng.uniform(0, tick)
        boot = rng.uniform(3, 8) * M
        setup = rng.uniform(2, 5) * M
        collect = 1 * M
        bot.bump(kind)
        manual.bump(kind)
        if kind == "forgotten":
            r = rental_for(day, None)
            used = rng.uniform(0.5, 4) * H
            # idle_since at the first tick after the last use; warned after window; destroyed
            # at the first tick >= warned + grace.
            idle_since = next_tick(boot + used, tick, phase)
            warned = next_tick(idle_since + idle.window_minutes * M, tick, phase)
            destroy = next_tick(warned + idle.grace_minutes * M, tick, phase)
            idle_s = destroy - (boot + used)
            useful = cost(r, used, boot + used)
            w_bot = cost(r, idle_s, idle_s)
            w_man = cost(r, 16 * H, 16 * H)
            bot.spend += useful + w_bot
            manual.spend += useful + w_man
            bot.add_waste("forgotten box idle", w_bot)
            manual.add_waste("forgotten box idle", w_man)
            continue

        r = rental_for(day, train)
        work = min(12 * H, max(5 * M, rng.lognormvariate(math.log(1.5 * H), 0.9)))
        exit_lag = next_tick(boot + setup + work + collect, tick, phase) - (
            boot + setup + work + collect)
        base_compute = setup + work + collect
        base = cost(r, base_compute, boot + base_compute)
        if kind == "normal":
            lag_bot = cost(r, exit_lag, exit_lag)
            lag = rng.uniform(0, 2) * H
            lag_man = cost(r, lag, lag)
            total = base + lag_bot
            if costs.budget_verdict(total, job_cap).stop:
                capped += 1
                total = min(total, job_cap + cost(r, tick, tick))
            bot.spend += total
            manual.spend += base + lag_man
            bot.add_waste("exit -> destroy lag", lag_bot)
            manual.add_waste("exit -> destroy lag", lag_man)
            continue

        if kind == "stuck":
            stall_at = rng.uniform(0, work)
            idle_since = next_tick(boot + setup + stall_at, tick, phase)
            warned = next_tick(idle_since + stuck_window_s, tick, phase)
            destroy = next_tick(warned + stuck_grace_s, tick, phase)
            stalled_s = destroy - (boot + setup + stall_at)
            before = cost(r, setup + stall_at, boot + setup + stall_at)
            w_bot = cost(r, stalled_s, stalled_s)
            w_man = cost(r, 8 * H, 8 * H)
            bot.spend += before + w_bot
            manual.spend += before + w_man
            bot.add_waste("stuck job stalled", w_bot)
            manual.add_waste("stuck job stalled", w_man)
            continue

        # preempted: the first rental is lost at a random point of the work; then the
        # engine's rule: re-rent (resume from the newest checkpoint) until max_attempts.
        attempts = 1
        spend_bot = Decimal(0)
        waste_bot = Decimal(0)
        remaining = work
        restore = 0.0
        while True:
            if attempts > 1:
                waste_bot += cost(r, restore + setup, boot)  # boot/restore/setup again
            if attempts > 1 and rng.random() >= args.repreempt:
                seg = restore + setup + remaining + collect
                spend_bot += cost(r, seg, boot + seg) + cost(r, exit_lag, exit_lag)
                break
            at = rng.uniform(0, remaining)
            lost = at % ckpt
            start_s = boot + restore + setup
            detect = next_tick(start_s + at, tick, phase) - (start_s + at)
            spend_bot += cost(r, restore + setup + at, start_s + at + detect)
            waste_bot += cost(r, lost, 0)
            if attempts >= max_attempts:
                failed_attempts += 1
                waste_bot = spend_bot  # the job failed: everything it bought is lost
                break
            attempts += 1
            remaining = remaining - at + lost
            restore = rng.uniform(1, 3) * M
            r = rental_for(day, train)
        bot.spend += spend_bot
        bot.add_waste("preemption (redo + re-setup)", waste_bot)
        # manual: noticed 2 h later (instance paused, storage bills), resumed by hand once.
        at = rng.uniform(0, work)
        lost = at % ckpt
        m_spend = cost(r, setup + at, boot + setup + at + 2 * H)
        m_spend += cost(r, setup + (work - at + lost) + collect,
                        boot + setup + work - at + lost + collect)
        m_waste = cost(r, lost + setup, 2 * H + boot)
        manual.spend += m_spend
        manual.add_waste("preemption (redo + re-setup)", m_waste)

    c.print_header(f"simulated month: {n} jobs (discrete-event model, seed {args.seed})")
    print(f"policy used: tick {tick:g} s; idle window {idle.window_minutes} min + grace "
          f"{idle.grace_minutes} min; stuck window {stuck_window_s / M:g} min + grace "
          f"{stuck_grace_s / M:g} min; "
          f"max_attempts {max_attempts}; job cap ${job_cap}; checkpoint every "
          f"{args.checkpoint_minutes:g} min (assumed)")
    kinds_all = sorted(set(bot.waste) | set(manual.waste))
    rows: list[list[object]] = []
    for k in kinds_all:
        wb, wm = bot.waste.get(k, Decimal(0)), manual.waste.get(k, Decimal(0))
        rows.append([k, f"${wb:.2f}", f"{100 * wb / bot.spend:.2f} %", f"${wm:.2f}",
                     f"{100 * wm / manual.spend:.2f} %"])
    tb = sum(bot.waste.values(), Decimal(0))
    tm = sum(manual.waste.values(), Decimal(0))
    rows.append(["TOTAL waste", f"${tb:.2f}", f"{100 * tb / bot.spend:.2f} %", f"${tm:.2f}",
                 f"{100 * tm / manual.spend:.2f} %"])
    rows.append(["TOTAL spend", f"${bot.spend:.2f}", "", f"${manual.spend:.2f}", ""])
    print(c.table(["category", "gpubot $", "gpubot % of spend", "manual $ (assumed)",
                   "manual %"], rows))
    counts = ", ".join(f"{k} {v}" for k, v in sorted(bot.count.items()))
    print(f"jobs: {counts}; preempted jobs that ran out of attempts: {failed_attempts}; "
          f"jobs stopped at the ${job_cap} cap: {capped}")
    print("MODELLED, not measured: timings are assumptions (see --help / the docstring); "
          "prices and policies come from the real code.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
