"""Rental labels: ``<prefix>:<job id>:<attempt>``, one per rental attempt (pure, stdlib only).

Every instance the bot rents carries such a label. The orphan sweep keys on the prefix; the
renting step keys on the whole label to adopt a rental whose create outcome it never saw (a
crash, or a timeout after the request left). Labels written before attempts were numbered
(``<prefix>:<job id>``) are still ours: :func:`parse_rental_label` accepts both forms.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from gpubot.models import InstanceObservation, ProviderStatus


@dataclass(frozen=True, slots=True)
class RentalLabel:
    """A parsed label of ours."""

    job_id: str
    attempt: int | None
    """The rental attempt (1-based); None for an old-format label without one."""


def rental_label(prefix: str, job_id: str, attempt: int) -> str:
    """The label of rental ``attempt`` (1-based) of ``job_id``: ``<prefix>:<job id>:<attempt>``.

    Raises:
        ValueError: an empty prefix or job id, a ``:`` in either, or ``attempt < 1``.
    """
    if not prefix or ":" in prefix:
        raise ValueError("a label prefix is non-empty and has no ':'")
    if not job_id or ":" in job_id:
        raise ValueError("a job id in a label is non-empty and has no ':'")
    if attempt < 1:
        raise ValueError("attempts are numbered from 1")
    return f"{prefix}:{job_id}:{attempt}"


def parse_rental_label(label: str | None, prefix: str) -> RentalLabel | None:
    """``label`` as ours, or None when it is not one of ours.

    Ours: ``<prefix>:<job id>`` (old format, ``attempt`` None) or ``<prefix>:<job id>:<n>``
    with ``n`` a positive decimal number. Anything else — another prefix, an empty job id,
    extra parts, a non-numeric attempt — is not ours (a user's own rental is never touched).
    """
    if not label or not prefix or not label.startswith(prefix + ":"):
        return None
    parts = label[len(prefix) + 1 :].split(":")
    if len(parts) == 1 and parts[0]:
        return RentalLabel(job_id=parts[0], attempt=None)
    if len(parts) == 2 and parts[0] and parts[1].isascii() and parts[1].isdigit():
        attempt = int(parts[1])
        if attempt >= 1 and not parts[1].startswith("0"):
            return RentalLabel(job_id=parts[0], attempt=attempt)
    return None


UNADOPTABLE_CUR_STATES = frozenset({"unloaded", "stopped"})
"""vast ``cur_state`` values of a contract that is released (destroyed rows linger as
``unloaded``) or stopped (refused low bids are created stopped)."""
UNADOPTABLE_STATUSES = frozenset(
    {ProviderStatus.STOPPED, ProviderStatus.EXITED, ProviderStatus.OUTBID}
)


def adoptable(
    listing: Iterable[InstanceObservation], label: str, recorded_ids: Collection[str]
) -> list[InstanceObservation]:
    """The instances in ``listing`` a renting step may adopt for the rental labelled ``label``.

    Adoptable: exactly this label, a provider id not already recorded for the job (any
    ``InstanceRow.provider_id`` of it, destroyed or not, whose destroy was requested or not),
    and neither released, stopped nor exited (``cur_state``/``next_state`` ``unloaded`` or
    ``stopped``, status stopped/exited/outbid). Sorted newest (highest id) first.
    """
    found = []
    for obs in listing:
        if obs.label != label or obs.provider_id in recorded_ids:
            continue
        raw = obs.raw_status or {}
        states = {str(raw.get(k) or "").strip().lower() for k in ("cur_state", "next_state")}
        actual = str(raw.get("actual_status") or "").strip().lower()
        if states & UNADOPTABLE_CUR_STATES or actual in {"stopped", "exited"}:
            continue
        if obs.status in UNADOPTABLE_STATUSES:
            continue
        found.append(obs)
    return sorted(found, key=_id_order, reverse=True)


def _id_order(obs: InstanceObservation) -> tuple[int, str]:
    pid = obs.provider_id
    return (int(pid), pid) if pid.isdigit() else (-1, pid)
