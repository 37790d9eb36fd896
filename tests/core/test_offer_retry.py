"""How often a job waiting for an offer searches again (``lifecycle.offer_retry_after``)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gpubot.lifecycle import OFFER_RETRY_MAX, offer_retry_after

TICK = timedelta(seconds=10)


@pytest.mark.parametrize(
    ("waited", "expected"),
    [
        (timedelta(0), TICK),  # the first retries: every tick
        (timedelta(seconds=90), TICK),
        (timedelta(minutes=10), timedelta(minutes=1)),  # a tenth of the wait
        (timedelta(minutes=50), OFFER_RETRY_MAX),
        (timedelta(hours=6), OFFER_RETRY_MAX),  # never longer than 5 minutes
    ],
)
def test_the_pause_is_a_tenth_of_the_wait_between_a_tick_and_five_minutes(
    waited: timedelta, expected: timedelta
) -> None:
    assert offer_retry_after(waited, TICK) == expected


def test_a_tick_longer_than_the_cap_is_the_pause() -> None:
    # an engine ticking every 10 minutes cannot search more often than it ticks
    assert offer_retry_after(timedelta(hours=3), timedelta(minutes=10)) == timedelta(minutes=10)
