"""A job that ends while its status is being read is read as ended with its real exit code.

The status and poll scripts read the exit-code file, then decide whether the process runs;
the job's wrapper can rename its exit-code file into place between the two. The scripts used
to call such a file "-1" (seen: a job that had ended with 0 failed "with status -1" under
load). Here the race is made certain: a ``tr`` on PATH writes the exit-code file right after
the script's read of it (its second ``tr``), then the script runs to the end in ``sh``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gpubot.remote import control
from gpubot.remote.control import RemoteLayout
from gpubot.remote.parsing import parse_poll, parse_status

NONCE = "0123456789abcdef"
TR_THEN_EXIT = """#!/bin/sh
n=$(cat "$RACE_COUNTER" 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" > "$RACE_COUNTER"
"$REAL_TR" "$@"
if [ "$n" = 2 ]; then echo 0 > "$RACE_EXIT.tmp" && mv -f "$RACE_EXIT.tmp" "$RACE_EXIT"; fi
"""


def _run_racing(script: str, layout: RemoteLayout, tmp_path: Path) -> str:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "tr").write_text(TR_THEN_EXIT)
    (shim / "tr").chmod(0o755)
    control_dir = Path(layout.control_dir)
    control_dir.mkdir(parents=True)
    (control_dir / "pid").write_text("999999\n")  # no such process: the job has ended
    env = {
        **os.environ,
        "PATH": f"{shim}:{os.environ['PATH']}",
        "REAL_TR": shutil.which("tr") or "/usr/bin/tr",
        "RACE_COUNTER": str(tmp_path / "tr-calls"),
        "RACE_EXIT": layout.exit_code_file(),
    }
    done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True,
                          timeout=30, check=True)
    assert (tmp_path / "tr-calls").read_text().strip() not in {"", "1"}, "the race never ran"
    return done.stdout


@pytest.fixture
def layout(tmp_path: Path) -> RemoteLayout:
    return RemoteLayout(root=str(tmp_path / "remote"), job_id="j-race")


def test_status_read_as_the_job_ends_gives_its_exit_code(
    layout: RemoteLayout, tmp_path: Path
) -> None:
    status = parse_status(_run_racing(control.status_script(layout), layout, tmp_path))
    assert status.exit_code == 0 and not status.running


def test_poll_as_the_job_ends_gives_its_exit_code(layout: RemoteLayout, tmp_path: Path) -> None:
    poll = parse_poll(_run_racing(control.poll_script(layout, nonce=NONCE), layout, tmp_path),
                      NONCE)
    assert poll.status.exit_code == 0 and not poll.status.running


def test_an_exit_code_file_without_a_number_is_still_minus_one(
    layout: RemoteLayout, tmp_path: Path
) -> None:
    Path(layout.control_dir).mkdir(parents=True)
    Path(layout.exit_code_file()).write_text("garbage\n")
    out = subprocess.run(["sh", "-c", control.status_script(layout)], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    assert parse_status(out).exit_code == -1
