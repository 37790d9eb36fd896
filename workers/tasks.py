"""Thin Celery tasks around the engine, governance and notify packages.

Arguments are ids and strings only.
"""

from __future__ import annotations

from celery.utils.log import get_task_logger

from workers.celery_app import app
from workers.runtime import deps, tick_counter

logger = get_task_logger(__name__)

ADVANCE_SOFT_TIME_LIMIT_SECONDS = 2100
"""> ``gpubot.db.queries.STEP_DEADLINE`` (2,000 s), which is > every inner timeout."""
ADVANCE_TIME_LIMIT_SECONDS = 2160
"""Hard kill; < the Redis visibility timeout (3,600 s), so a running step is never delivered
twice because of the broker."""


@app.task(name="workers.tasks.reconcile_tick_task", ignore_result=True)
def reconcile_tick_task() -> dict[str, object]:
    """Beat: list instances once, meter, verify destroys, sweep, claim due jobs and enqueue."""
    from gpubot.engine.tick import reconcile_tick

    engine_deps = deps()
    sweep = tick_counter() % max(1, engine_deps.config.engine.sweep_every_ticks) == 0
    report = reconcile_tick(
        engine_deps,
        dispatch=lambda job_id, token: advance_job_task.delay(job_id, token),
        sweep=sweep,
    )
    return {"claimed": len(report.claimed), "listed_ok": report.listed_ok}


@app.task(
    name="workers.tasks.advance_job_task",
    ignore_result=True,
    acks_late=True,
    soft_time_limit=ADVANCE_SOFT_TIME_LIMIT_SECONDS,
    time_limit=ADVANCE_TIME_LIMIT_SECONDS,
)
def advance_job_task(job_id: str, lock_token: str) -> None:
    """Advance one claimed job by one step (idempotent; a redelivery is harmless).

    Time limits: above the step deadline (the claim heartbeat stops renewing at
    ``STEP_DEADLINE``) and below the Redis visibility timeout (3,600 s); see
    docs/architecture.md, claims."""
    from gpubot.engine.steps import advance_job

    advance_job(deps(), job_id, lock_token)


@app.task(name="workers.tasks.deliver_messages_task", ignore_result=True)
def deliver_messages_task() -> int:
    """Send pending outbox messages to Slack when Slack is configured (else a no-op)."""
    from workers.runtime import deliverer

    sender = deliverer()
    return sender.deliver_once() if sender is not None else 0


@app.task(
    name="workers.tasks.check_charges_task",
    ignore_result=True,
    autoretry_for=(Exception,),
    retry_backoff=60,
    max_retries=5,
)
def check_charges_task() -> int:
    """Daily: compare the ledger with the provider's charges; differences go to ops."""
    from gpubot.governance.charges import check_charges

    engine_deps = deps()
    return len(check_charges(engine_deps, now=engine_deps.clock()))
