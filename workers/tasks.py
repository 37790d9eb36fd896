"""Thin Celery tasks around the engine, governance and notify packages.

Arguments are ids and strings only.

The answers to acknowledged Slack commands and clicks (``answer_*_task``) are sent by name
onto their own queue, :data:`ANSWERS_QUEUE` (``app.serve.answer_sender``), which
``app.worker`` declares next to the default one: a worker consumes both, and a worker started
with ``-Q answers`` serves answers only, so they never wait behind ticks and job steps
(docs/operations.md).
"""

from __future__ import annotations

from celery.utils.log import get_task_logger

from workers.celery_app import app
from workers.runtime import answerer, deps, tick_counter

logger = get_task_logger(__name__)

ANSWERS_QUEUE = "answers"
"""The Celery queue of ``answer_command_task`` / ``answer_action_task``."""
ANSWER_EXPIRES_SECONDS = 900
"""An answer not started within 15 min is dropped by the worker (Celery ``expires``): the
response_url lives 30 min, and a launch acted on much later than asked would surprise."""
ANSWER_SOFT_TIME_LIMIT_SECONDS = 300
"""Above a launch's worst case (a vast search with its 429 retries, database writes)."""
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


@app.task(
    name="workers.tasks.answer_command_task",
    ignore_result=True,
    soft_time_limit=ANSWER_SOFT_TIME_LIMIT_SECONDS,
)
def answer_command_task(
    *, text: str, user: str, channel: str, team: str = "", request_key: str, response_url: str
) -> str:
    """Answer one acknowledged ``/gpu`` (``bot.answers.command_request``) through its
    response_url. Not acked late: a redelivery an hour later (the Redis visibility timeout)
    would answer too late; a second copy is harmless anyway (same request key)."""
    return answerer().answer_command(
        text=text, user=user, channel=channel, team=team, request_key=request_key,
        response_url=response_url,
    )


@app.task(
    name="workers.tasks.answer_action_task",
    ignore_result=True,
    soft_time_limit=ANSWER_SOFT_TIME_LIMIT_SECONDS,
)
def answer_action_task(
    *, action_id: str, value: str, user: str, channel: str, action_ts: str = "",
    response_url: str, request_key: str, source: str = "message",
) -> str:
    """Answer one acknowledged button click (``bot.answers.action_request``; ``source`` is
    "home" for a click on the App Home)."""
    return answerer().answer_action(
        action_id=action_id, value=value, user=user, channel=channel, action_ts=action_ts,
        response_url=response_url, request_key=request_key, source=source,
    )
