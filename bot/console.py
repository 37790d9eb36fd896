"""The terminal chat front: ``gpubot chat "/gpu ..."`` and the demo.

It runs the same dispatcher as Slack (:func:`gpubot.chat.dispatch.handle_command`), prints
the reply and then follows the job's thread by *reading* the outbox rows (parent, card
versions, replies, files). It never marks rows delivered: ``dirty`` belongs to Slack delivery.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from sqlalchemy import or_, select

from gpubot.chat.dispatch import handle_command
from gpubot.commands import CancelCommand, LaunchCommand, RentCommand, parse_command
from gpubot.db.engine import session_scope
from gpubot.db.tables import JobRow, MessageRow
from gpubot.deps import EngineDeps
from gpubot.errors import CommandSyntaxError
from gpubot.models import JobState

DEFAULT_TIMEOUT_SECONDS = 6 * 3600.0
EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_REFUSED = 2
EXIT_TIMEOUT = 3


def _follows(deps: EngineDeps, text: str) -> bool:
    """Launches, rentals and cancels are followed to the end; other commands are not."""
    try:
        command = parse_command(text, deps.config)
    except CommandSyntaxError:
        return False
    return isinstance(command, LaunchCommand | RentCommand | CancelCommand)


def _is_cancel(deps: EngineDeps, text: str) -> bool:
    try:
        return isinstance(parse_command(text, deps.config), CancelCommand)
    except CommandSyntaxError:
        return False


def run_chat(
    deps: EngineDeps,
    text: str,
    *,
    user: str = "console",
    channel: str = "console",
    follow: bool = True,
    out: TextIO = sys.stdout,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    poll_seconds: float = 0.5,
) -> int:
    """Run one command and print the reply; with ``follow``, print the job's thread.

    Returns 0 on success (a followed launch must end ``succeeded``; a followed cancel must end
    ``cancelled``), 1 when the followed job failed or was cancelled, 2 when the command was
    refused or malformed, 3 when following timed out.
    """
    reply = handle_command(deps, text, user=user, channel=channel, request_key=None)
    print(reply.text, file=out, flush=True)
    if reply.file_path:
        print(f"(chart: {reply.file_path})", file=out, flush=True)
    if not reply.ok:
        return EXIT_REFUSED
    if not follow or reply.job_id is None or not _follows(deps, text):
        return EXIT_OK
    want = JobState.CANCELLED if _is_cancel(deps, text) else JobState.SUCCEEDED
    state = follow_thread(
        deps, reply.job_id, user=user, out=out, timeout_seconds=timeout_seconds,
        poll_seconds=poll_seconds,
    )
    if state is None:
        return EXIT_TIMEOUT
    if state is want:
        return EXIT_OK
    return EXIT_JOB_FAILED


def follow_thread(
    deps: EngineDeps,
    job_id: str,
    *,
    user: str = "console",
    out: TextIO = sys.stdout,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    poll_seconds: float = 0.5,
) -> JobState | None:
    """Print the job's thread as it grows until the job is finished; return its final state.

    Returns None when ``timeout_seconds`` pass first. Card edits are printed once per new
    version; ephemeral rows only when addressed to ``user``.
    """
    printed: set[int] = set()
    card_versions: dict[int, int] = {}
    deadline = time.monotonic() + timeout_seconds
    while True:
        with session_scope(deps.sessions) as session:
            job = session.get(JobRow, job_id)
            state = JobState(job.state) if job is not None else None
            rows = list(
                session.scalars(
                    select(MessageRow)
                    .where(or_(MessageRow.job_id == job_id, MessageRow.thread_key == job_id))
                    .order_by(MessageRow.id)
                )
            )
            for row in rows:
                _print_row(row, printed, card_versions, user=user, out=out)
        if state is None or state.is_finished():
            return state
        if time.monotonic() > deadline:
            print(f"(stopped following {job_id} after {timeout_seconds:g} s)", file=out)
            return None
        time.sleep(poll_seconds)


def _print_row(
    row: MessageRow,
    printed: set[int],
    card_versions: dict[int, int],
    *,
    user: str,
    out: TextIO,
) -> None:
    if row.kind == "card":
        if card_versions.get(row.id) == row.version:
            return
        card_versions[row.id] = row.version
        print("  [card] " + " | ".join(row.text.splitlines()), file=out, flush=True)
        return
    if row.id in printed:
        return
    printed.add(row.id)
    if row.kind == "parent":
        print(f"── thread {row.job_id or row.group_id} ──", file=out)
        print(row.text, file=out, flush=True)
    elif row.kind == "file":
        print(f"  [file] {row.text}: {row.file_path}", file=out, flush=True)
    elif row.kind == "ephemeral":
        if row.user == user:
            print(f"  (only you) {row.text}", file=out, flush=True)
    else:
        print("  " + row.text.replace("\n", "\n  "), file=out, flush=True)
