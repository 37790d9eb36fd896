"""What every chat verb returns: :class:`Reply`, and the shared refusals."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from gpubot.db.tables import JobRow
from gpubot.render import chat as texts


@dataclass
class Reply:
    """What a front shows the user.

    ``text`` is always set (plain mrkdwn, also the console rendering); ``blocks`` is optional
    Block Kit. ``ephemeral`` replies are shown to the requester only. ``job_id`` names the job
    the command created or is about (the console follows its thread). ``file_path`` is a PNG
    to attach (loss chart, cost chart). ``ok`` is False for usage errors and refusals.
    """

    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)
    ephemeral: bool = True
    job_id: str | None = None
    file_path: str | None = None
    ok: bool = True
    duplicate: bool = False
    """True when the request was already handled (a redelivery): nothing was done again."""
    job_ids: list[str] = field(default_factory=list)
    """The child jobs a group launch (sweep, shards) created."""


def refusal(text: str) -> Reply:
    """An ephemeral ``ok=False`` answer; ``text`` is mrkdwn."""
    return Reply(text=text, ok=False)


def no_job(job_id: str) -> Reply:
    """The refusal for a job or group id that does not exist."""
    return refusal(texts.no_job(job_id))


def job_or_none(session: Session, job_id: str) -> JobRow | None:
    """The job row, or None for an empty or unknown id."""
    return session.get(JobRow, job_id) if job_id else None
