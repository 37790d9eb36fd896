"""Rental labels: one per attempt, both label formats recognised, adoption filter (pure)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gpubot.engine.labels import RentalLabel, adoptable, parse_rental_label, rental_label
from gpubot.models import InstanceObservation, ProviderStatus


def test_a_label_names_prefix_job_and_attempt() -> None:
    assert rental_label("gpubot", "j-abc123", 2) == "gpubot:j-abc123:2"


@pytest.mark.parametrize(
    ("prefix", "job_id", "attempt"),
    [("", "j-1", 1), ("a:b", "j-1", 1), ("gpubot", "", 1), ("gpubot", "j:1", 1),
     ("gpubot", "j-1", 0)],
)
def test_a_label_that_could_not_be_parsed_back_is_refused(
    prefix: str, job_id: str, attempt: int
) -> None:
    with pytest.raises(ValueError):
        rental_label(prefix, job_id, attempt)


@pytest.mark.parametrize(
    ("label", "parsed"),
    [
        ("gpubot:j-abc:3", RentalLabel("j-abc", 3)),
        ("gpubot:j-abc:12", RentalLabel("j-abc", 12)),
        ("gpubot:j-abc", RentalLabel("j-abc", None)),  # the old format is still ours
        ("gpubot:j-abc:0", None),
        ("gpubot:j-abc:01", None),
        ("gpubot:j-abc:x", None),
        ("gpubot:j-abc:1:2", None),
        ("gpubot:", None),
        ("gpubot::1", None),
        ("gpubotx:j-abc:1", None),
        ("other:j-abc:1", None),
        ("gpubot", None),
        ("my-training-job", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_recognises_both_formats_and_nothing_else(
    label: str | None, parsed: RentalLabel | None
) -> None:
    assert parse_rental_label(label, "gpubot") == parsed


def test_parse_inverts_make() -> None:
    for attempt in (1, 2, 9, 10, 123):
        label = rental_label("p", "j-x", attempt)
        assert parse_rental_label(label, "p") == RentalLabel("j-x", attempt)


def _obs(
    pid: str,
    label: str,
    status: ProviderStatus = ProviderStatus.PROVISIONING,
    **raw: str | None,
) -> InstanceObservation:
    return InstanceObservation(
        provider_id=pid, status=status, label=label, is_bid=True,
        price_per_hour_usd=Decimal("0.2"), raw_status=dict(raw),
    )


def test_adoptable_skips_recorded_released_stopped_and_other_attempts() -> None:
    label = "gpubot:j-1:2"
    listing = [
        _obs("10", "gpubot:j-1:1", cur_state="running"),  # the previous attempt's rental
        _obs("11", label, cur_state="unloaded", next_state="unloaded",
             actual_status="exited"),  # destroyed, still listed (linger)
        _obs("12", label, ProviderStatus.OUTBID, cur_state="stopped", next_state="stopped",
             actual_status="stopped"),  # a refused low bid, created stopped
        _obs("13", label, cur_state="running"),  # recorded for the job already
        _obs("14", label, ProviderStatus.EXITED, cur_state="running", actual_status="exited"),
        _obs("15", label, cur_state="running", actual_status=None),  # the one to adopt
        _obs("16", "gpubot:j-1", cur_state="running"),  # old-format label: another attempt
    ]
    assert [o.provider_id for o in adoptable(listing, label, {"13"})] == ["15"]


def test_adoptable_prefers_the_newest() -> None:
    label = "gpubot:j-1:1"
    listing = [_obs("7", label, cur_state="running"), _obs("9", label, cur_state="running")]
    assert [o.provider_id for o in adoptable(listing, label, set())] == ["9", "7"]
