"""The live card (a job's top-level message) and the group's top-level text. Pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from gpubot.render.slack import group_root_text
from gpubot.render.text import card_blocks, card_lines
from gpubot.render.views import JobView

NOW = datetime(2025, 1, 31, 14, 5, tzinfo=UTC)


def view(**changes: object) -> JobView:
    base: dict[str, object] = {
        "job_id": "j-1", "template": "train", "kind": "job", "state": "queued",
        "requester": "UALICE1", "plan_lines": ["Plan for train lr=0.1:", "• 1x RTX 4090"],
        "updated_at": NOW,
    }
    return JobView(**{**base, **changes})  # type: ignore[arg-type]


def test_the_card_shows_the_plan_until_an_instance_is_rented_and_who_launched_it() -> None:
    queued = "\n".join(card_lines(view()))
    assert "Plan for train lr=0.1:" in queued and "RTX 4090" in queued
    assert "launched by <@UALICE1>" in queued
    running = "\n".join(card_lines(view(state="running", provider_id="77", gpu_name="RTX 4090",
                                        rental_type="interruptible", attempts=2)))
    assert "Plan for" not in running
    assert "instance 77 RTX 4090 interruptible (attempt 2)" in running


def test_the_last_checkpoint_is_a_card_field_with_its_age() -> None:
    lines = card_lines(view(state="running", last_checkpoint_key="jobs/j-1/checkpoints/ckpt-300/",
                            last_checkpoint_at=NOW - timedelta(minutes=2)))
    assert "last checkpoint: ckpt-300, 2 min ago" in lines


def test_a_finished_card_shows_outcome_cost_and_links_and_has_no_button() -> None:
    done = view(state="succeeded", spent_usd=Decimal("0.42"), price_per_hour_usd=Decimal("0.4"),
                results=[{"name": "metrics.json", "url": "https://s3.example/m?sig=1"}])
    lines = card_lines(done)
    assert "succeeded" in lines[0] and any("spent $0.42" in line for line in lines)
    assert any("<https://s3.example/m?sig=1|metrics.json>" in line for line in lines)
    assert [b["type"] for b in card_blocks(done)] == ["section", "section"]


def test_a_run_of_a_group_mentions_nobody() -> None:
    assert "<@" not in "\n".join(card_lines(view(in_group=True)))


def test_the_group_root_puts_the_launcher_and_plan_under_the_head_line() -> None:
    text = group_root_text("Sweep g-1 · running\n• j-1 lr=0.1", requester="UALICE1",
                           plan="Sweep of train: 1 runs")
    assert text.splitlines() == [
        "Sweep g-1 · running", "launched by <@UALICE1>", "Sweep of train: 1 runs", "• j-1 lr=0.1"
    ]
