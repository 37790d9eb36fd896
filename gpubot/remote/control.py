"""Shell scripts for a job's remote life, built as plain strings. Pure (stdlib only).

Every builder returns a POSIX ``sh`` script to pass to :meth:`Runner.exec`. Every value is
``shlex.quote``-d; values that come from users (template parameters, repository URLs, refs)
reach the shell only as exported environment variables, never as code. Template commands
(``setup``, ``run``) are code by definition: they come from the operator's gpubot.toml.

Remote layout, below the instance's remote root ``R`` (discover it with
:data:`DISCOVER_ROOT_COMMAND`; vast images use ``/workspace``, the simulator sets
``GPUBOT_REMOTE_ROOT`` per instance)::

    R/gpubot/<job_id>/work            GPUBOT_WORKSPACE (the code; the job's cwd)
    R/gpubot/<job_id>/checkpoints     GPUBOT_CHECKPOINT_DIR
    R/gpubot/<job_id>/results         GPUBOT_RESULTS_DIR
    R/gpubot/<job_id>/progress.json   GPUBOT_PROGRESS_FILE
    R/gpubot/<job_id>/.control/       pid, exit_code, log (the job); setup.pid,
                                      setup.exit_code, setup.log (the setup stage); cancelled

A detached stage (``job`` or ``setup``) is *running* while its pid file names a live process
group and its exit-code file is absent; *finished* once the exit-code file exists; *gone*
when neither (the process died without a word: SIGKILL, OOM killer, instance restart).

Why one module over 500 lines: every script here writes or reads the same remote layout and
the same control files (pid, exit code, log, the ``cancelled`` marker), and each builder is
small; keeping the writers (start, setup, kill, upload) next to the readers (status, tail,
checkpoints) is what keeps their file names and quoting in agreement. The workdir packer at
the end shares the exclude list with the remote side. The output parsers already live in
:mod:`gpubot.remote.parsing`.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import shlex
import stat
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import Literal

__all__ = [
    "CONTROL_FILE_MAX_BYTES",
    "DEFAULT_EXCLUDE",
    "DISCOVER_ROOT_COMMAND",
    "DOWNLOAD_SHA_MISMATCH_EXIT",
    "DownloadItem",
    "LOG_TAIL_MAX_BYTES",
    "POLL_MAX_OUTPUT_BYTES",
    "POLL_TAIL_LINES",
    "PROGRESS_MAX_BYTES",
    "RemoteLayout",
    "SETUP_FAILURE_TAIL_LINES",
    "SETUP_FAILURE_TAIL_MAX_BYTES",
    "Stage",
    "UploadItem",
    "download_files_script",
    "env_exports",
    "git_clone_script",
    "kill_script",
    "list_checkpoints_script",
    "pack_workdir",
    "poll_marker",
    "poll_script",
    "prepare_dirs_script",
    "remote_layout",
    "setup_script",
    "start_detached_script",
    "status_script",
    "tail_log_script",
    "unpack_archive_script",
    "upload_files_script",
]

DISCOVER_ROOT_COMMAND = 'printf %s "${GPUBOT_REMOTE_ROOT:-/workspace}"'
"""Prints the instance's remote root (no newline)."""

DOWNLOAD_SHA_MISMATCH_EXIT = 3
"""Exit status of :func:`download_files_script` when a file's sha256 does not match."""

# Everything a job writes is untrusted (a single log line may be gigabytes), so every read of
# a job-written file below is bounded in bytes on the instance, before it reaches SSH.

LOG_TAIL_MAX_BYTES = 256 * 1024
"""The most bytes :func:`tail_log_script` prints by default: the log's newest bytes, cut to
whole lines (or the newest part of one line longer than that)."""

SETUP_FAILURE_TAIL_MAX_BYTES = 16 * 1024
"""The most bytes of the setup log :func:`setup_script` copies to stderr when it fails."""

SETUP_FAILURE_TAIL_LINES = 20
"""The most lines of the setup log :func:`setup_script` copies to stderr when it fails."""

PROGRESS_MAX_BYTES = 64 * 1024
"""The most bytes of the progress file :func:`status_script` reads; a bigger file arrives
cut and so reads as unparseable (no progress), never as a huge string."""

CONTROL_FILE_MAX_BYTES = 64
"""The most bytes read from a pid or exit-code file (a job could overwrite them)."""

DEFAULT_EXCLUDE: tuple[str, ...] = (
    ".git/",
    ".venv/",
    "venv/",
    "__pycache__/",
    "*.pyc",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    "node_modules/",
    "results/",
    "checkpoints/",
    "archive*/",
    ".env",
    "*.pem",
    ".DS_Store",
)
"""The usual rsync excludes for a training workdir (envs, caches, VCS, results, weights) plus
secrets that must never travel (``.env``, keys)."""

Stage = Literal["job", "setup"]

_JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_PARAM_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_URL_FORBIDDEN_RE = re.compile(r'[\s"\\\x00-\x1f\x7f]')

# Escapes stdin into the body of a JSON string: drops control characters (incl. newlines)
# and backslash-escapes backslashes and double quotes.
_JSON_STRING_FILTER = "tr -d '\\000-\\037' | sed -e 's/\\\\/\\\\\\\\/g' -e 's/\"/\\\\\"/g'"


def q(value: str | os.PathLike[str]) -> str:
    """``shlex.quote`` for strings and paths."""
    return shlex.quote(os.fspath(value))


def _read_small(path: str, cleanup: str) -> str:
    """Shell: the first CONTROL_FILE_MAX_BYTES bytes of ``path`` (quoted) through ``cleanup``."""
    return f"head -c {CONTROL_FILE_MAX_BYTES} {path} 2>/dev/null | {cleanup}"


def _settle_exit_code(exit_file: str, read_ec: str) -> str:
    """Shell, after ``ec`` was read and ``running`` decided: the job may have ended between
    the two (its wrapper renames the exit-code file into place atomically), so a file that
    appeared meanwhile is read again and wins (``running=false``); -1 only for an exit-code
    file that holds no number. (Once, the check said "-1" for a job that had just ended with
    0: the file was absent at the read and present at the check.)"""
    return (
        f'if [ -z "$ec" ] && [ -f {exit_file} ]; then\n'
        f"  ec=$({read_ec}); running=false\n"
        '  [ -n "$ec" ] || ec=-1\n'
        "fi\n"
    )


def _tail_lines(path: str, lines: int, max_bytes: int) -> str:
    """Shell printing the last ``lines`` lines of ``path`` (quoted) within its last
    ``max_bytes`` bytes; prints nothing (status 0) when the file is absent.

    Reads ``max_bytes + 1`` bytes from the end (``tail -c`` seeks: the file's size does not
    matter). When the file was longer than ``max_bytes`` the window's first line is partial
    (or empty) and is dropped; when no whole line is left after it (one line longer than the
    window) the newest ``max_bytes`` bytes of that line are printed instead. At most
    ``max_bytes`` bytes are printed (``max_bytes + 1`` if the file grows between the size
    check and the read).
    """
    window = max_bytes + 1
    return (
        f"if [ -f {path} ]; then\n"
        f"  size=$(wc -c < {path} 2>/dev/null | tr -cd 0-9)\n"
        f'  if [ "${{size:-0}}" -le {max_bytes} ]; then\n'
        f"    tail -c {window} {path} | tail -n {lines}\n"
        f'  elif [ "$(tail -c {window} {path} | sed 1d | head -c 1 | wc -c)" -gt 0 ]; then\n'
        f"    tail -c {window} {path} | sed 1d | tail -n {lines}\n"
        "  else\n"
        f"    tail -c {max_bytes} {path}\n"
        "  fi\n"
        "fi\n"
    )


@dataclass(frozen=True, slots=True)
class RemoteLayout:
    """Where one job's files live on the instance (see the module docstring)."""

    root: str
    job_id: str

    @property
    def job_dir(self) -> str:
        return f"{self.root.rstrip('/') or ''}/gpubot/{self.job_id}"

    @property
    def workspace(self) -> str:
        return f"{self.job_dir}/work"

    @property
    def checkpoint_dir(self) -> str:
        return f"{self.job_dir}/checkpoints"

    @property
    def results_dir(self) -> str:
        return f"{self.job_dir}/results"

    @property
    def progress_file(self) -> str:
        return f"{self.job_dir}/progress.json"

    @property
    def control_dir(self) -> str:
        return f"{self.job_dir}/.control"

    def pid_file(self, stage: Stage = "job") -> str:
        return f"{self.control_dir}/{_stage_prefix(stage)}pid"

    def exit_code_file(self, stage: Stage = "job") -> str:
        return f"{self.control_dir}/{_stage_prefix(stage)}exit_code"

    def log_file(self, stage: Stage = "job") -> str:
        return f"{self.control_dir}/{_stage_prefix(stage)}log"

    @property
    def cancelled_marker(self) -> str:
        return f"{self.control_dir}/cancelled"

    def archive_path(self) -> str:
        """Where the bot uploads the packed workdir before :func:`unpack_archive_script`."""
        return f"{self.control_dir}/workdir.tar.gz"


def _stage_prefix(stage: Stage) -> str:
    if stage == "job":
        return ""
    if stage == "setup":
        return "setup."
    raise ValueError(f"unknown stage {stage!r}")


def remote_layout(root: str, job_id: str) -> RemoteLayout:
    """The layout for ``job_id`` under ``root`` (the output of DISCOVER_ROOT_COMMAND).

    Raises:
        ValueError: ``root`` is not an absolute path, or ``job_id`` is not
            ``[A-Za-z0-9][A-Za-z0-9._-]*`` (at most 128 characters).
    """
    root = root.strip()
    if not root.startswith("/") or "\x00" in root or "\n" in root:
        raise ValueError(f"remote root must be an absolute path, got {root!r}")
    if not _JOB_ID_RE.match(job_id) or job_id in {".", ".."}:
        raise ValueError(f"invalid job id {job_id!r}")
    return RemoteLayout(root=str(PurePosixPath(root)), job_id=job_id)


def prepare_dirs_script(layout: RemoteLayout) -> str:
    """Create the workspace, checkpoint, results and control directories (idempotent)."""
    dirs = [layout.workspace, layout.checkpoint_dir, layout.results_dir, layout.control_dir]
    return "set -e\nmkdir -p " + " ".join(q(d) for d in dirs) + "\n"


def unpack_archive_script(layout: RemoteLayout, archive_path: str) -> str:
    """Extract the tar.gz made by :func:`pack_workdir` into the workspace, then delete it.

    Files already in the workspace are overwritten; others are kept. Exits non-zero (tar's
    status) when the archive is missing or corrupt.
    """
    return (
        "set -e\n"
        f"mkdir -p {q(layout.workspace)}\n"
        f"tar -xzf {q(archive_path)} --no-same-owner -C {q(layout.workspace)}\n"
        f"rm -f {q(archive_path)}\n"
    )


def git_clone_script(layout: RemoteLayout, repo: str, ref: str) -> str:
    """Check out ``ref`` (branch, tag or commit) of ``repo`` into the workspace, shallowly.

    Idempotent: a workspace that is already a git checkout is fetched and switched to ``ref``.
    ``repo`` and ``ref`` travel as environment variables only.

    Raises:
        ValueError: ``repo``/``ref`` empty or starting with ``-`` (would read as an option).
    """
    for name, value in (("repo", repo), ("ref", ref)):
        if not value or value.startswith("-") or "\n" in value or "\x00" in value:
            raise ValueError(f"invalid git {name}")
    return (
        "set -e\n"
        f"export GPUBOT_GIT_REPO={q(repo)}\n"
        f"export GPUBOT_GIT_REF={q(ref)}\n"
        f"W={q(layout.workspace)}\n"
        'mkdir -p "$W"\n'
        'if [ ! -d "$W/.git" ]; then\n'
        '  git init -q "$W"\n'
        '  git -C "$W" remote add origin "$GPUBOT_GIT_REPO"\n'
        "else\n"
        '  git -C "$W" remote set-url origin "$GPUBOT_GIT_REPO"\n'
        "fi\n"
        'git -C "$W" fetch -q --depth 1 origin "$GPUBOT_GIT_REF"\n'
        'git -C "$W" checkout -q --force --detach FETCH_HEAD\n'
        'git -C "$W" rev-parse HEAD\n'
    )


def env_exports(
    layout: RemoteLayout, params: Mapping[str, str], resume_from: str | None
) -> str:
    """``export`` lines for the job contract, one per line.

    Exports GPUBOT_JOB_ID, GPUBOT_WORKSPACE, GPUBOT_CHECKPOINT_DIR, GPUBOT_RESULTS_DIR,
    GPUBOT_PROGRESS_FILE, GPUBOT_RESUME_FROM (only when ``resume_from`` is given) and
    ``GPUBOT_PARAM_<NAME>`` (name upper-cased) for every parameter, plus
    ``PYTHONUNBUFFERED=1`` so Python jobs' logs are live.

    Raises:
        ValueError: a parameter name is not an identifier, or two names collide when
            upper-cased.
    """
    pairs: list[tuple[str, str]] = [
        ("GPUBOT_JOB_ID", layout.job_id),
        ("GPUBOT_WORKSPACE", layout.workspace),
        ("GPUBOT_CHECKPOINT_DIR", layout.checkpoint_dir),
        ("GPUBOT_RESULTS_DIR", layout.results_dir),
        ("GPUBOT_PROGRESS_FILE", layout.progress_file),
        ("PYTHONUNBUFFERED", "1"),
    ]
    if resume_from is not None:
        pairs.append(("GPUBOT_RESUME_FROM", resume_from))
    seen: set[str] = set()
    for name in sorted(params):
        if not _PARAM_RE.match(name):
            raise ValueError(f"invalid parameter name {name!r}")
        var = f"GPUBOT_PARAM_{name.upper()}"
        if var in seen:
            raise ValueError(f"parameter names collide: {var}")
        seen.add(var)
        value = params[name]
        if "\x00" in value:
            raise ValueError(f"parameter {name} contains a NUL byte")
        pairs.append((var, value))
    return "".join(f"export {k}={q(v)}\n" for k, v in pairs)


def setup_script(layout: RemoteLayout, commands: Sequence[str]) -> str:
    """Run the template's setup ``commands`` one by one in the workspace.

    Each command's output is appended to the setup log (``.control/setup.log``) after a
    ``+ <command>`` header. The script stops at the first failure, prints the log's last
    :data:`SETUP_FAILURE_TAIL_LINES` lines (at most :data:`SETUP_FAILURE_TAIL_MAX_BYTES`
    bytes) to stderr and exits with that command's status; 0 when all succeeded. Run it in the
    foreground, or detached with ``start_detached_script(..., stage="setup")``.
    """
    log = q(layout.log_file("setup"))
    lines = [
        f"mkdir -p {q(layout.control_dir)}",
        f"cd {q(layout.workspace)} || exit 1",
    ]
    for command in commands:
        lines.append(f"printf '+ %s\\n' {q(command)} >> {log}")
        lines.append(
            f"sh -c {q(command)} >> {log} 2>&1 < /dev/null || "
            f"{{ rc=$?; echo \"setup command failed with exit status $rc\" >> {log}; "
            f"{{ {_tail_lines(log, SETUP_FAILURE_TAIL_LINES, SETUP_FAILURE_TAIL_MAX_BYTES)}"
            f"}} >&2; exit $rc; }}"
        )
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


def start_detached_script(
    layout: RemoteLayout, run_command: str, env: str, *, stage: Stage = "job"
) -> str:
    """Start ``run_command`` in the workspace, detached from the SSH session.

    The command runs under ``setsid nohup`` in its own session and process group (it
    survives the connection closing), with ``env`` (from :func:`env_exports`) exported and its
    stdout+stderr appended to the stage's log. The pid (= process group id) goes to the
    stage's pid file; when the command ends, its exit status is written atomically to the
    stage's exit-code file.

    Idempotent: when the stage is already running (live pid, no exit code), nothing is started
    and the script prints ``already-running <pid>``; otherwise it prints ``started <pid>``.
    Starting again after the stage finished clears the old exit code and starts anew.
    """
    pid_file = q(layout.pid_file(stage))
    exit_file = q(layout.exit_code_file(stage))
    log = q(layout.log_file(stage))
    wrapper = (
        f"echo $$ > {pid_file}.tmp && mv -f {pid_file}.tmp {pid_file}\n"
        f"sh -c {q(run_command)} < /dev/null >> {log} 2>&1\n"
        "rc=$?\n"
        f'echo "$rc" > {exit_file}.tmp && mv -f {exit_file}.tmp {exit_file}\n'
    )
    return (
        f"mkdir -p {q(layout.control_dir)} {q(layout.workspace)} || exit 1\n"
        f"if [ -f {pid_file} ] && [ ! -f {exit_file} ]; then\n"
        f"  pid=$({_read_small(pid_file, 'tr -cd 0-9')})\n"
        '  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then\n'
        '    echo "already-running $pid"; exit 0\n'
        "  fi\n"
        "fi\n"
        f"rm -f {exit_file} {pid_file}\n"
        + (f"rm -f {q(layout.cancelled_marker)}\n" if stage == "job" else "")
        + f"cd {q(layout.workspace)} || exit 1\n"
        + env
        + f'echo "=== gpubot: {stage} started $(date -u +%Y-%m-%dT%H:%M:%SZ) ===" >> {log}\n'
        f"setsid nohup sh -c {q(wrapper)} > /dev/null 2>&1 < /dev/null &\n"
        "pid=$!\n"
        # the wrapper writes its own pid too; write $! now so the pid is known on return
        f"[ -f {pid_file} ] || {{ echo \"$pid\" > {pid_file}.start && "
        f"mv -f {pid_file}.start {pid_file}; }}\n"
        'echo "started $pid"\n'
    )


def status_script(layout: RemoteLayout, *, stage: Stage = "job") -> str:
    """Print one JSON line describing the stage (parse with ``parsing.parse_status``).

    Keys: ``stage``; ``running`` (bool); ``pid`` (int|null); ``exit_code`` (int|null);
    ``log_size`` (bytes, 0 when absent); ``progress`` (the progress file's text as a JSON
    string with control characters removed, at most :data:`PROGRESS_MAX_BYTES` of it, or
    null); ``disk_free_mb`` (free
    space where the workspace lives, or null); ``oom_hint`` (the newest OOM-killer line from
    ``dmesg``, or null; ``dmesg_readable`` says whether dmesg could be read at all);
    ``cancelled`` (bool); ``now`` (remote epoch seconds).
    """
    pid_file = q(layout.pid_file(stage))
    exit_file = q(layout.exit_code_file(stage))
    log = q(layout.log_file(stage))
    progress = q(layout.progress_file)
    read_ec = _read_small(exit_file, "tr -cd '0-9-'")
    return (
        f"pid=$({_read_small(pid_file, 'tr -cd 0-9')})\n"
        f"ec=$({read_ec})\n"
        "running=false\n"
        'if [ -n "$pid" ] && [ -z "$ec" ] && kill -0 "$pid" 2>/dev/null; then running=true; fi\n'
        + _settle_exit_code(exit_file, read_ec)
        + f"logsize=$(wc -c < {log} 2>/dev/null | tr -cd 0-9)\n"
        f"if [ -f {progress} ]; then "
        f"prog=\"\\\"$(head -c {PROGRESS_MAX_BYTES} {progress} | {_JSON_STRING_FILTER})\\\"\"; "
        "else prog=null; fi\n"
        f"free=$(df -Pk {q(layout.job_dir)} 2>/dev/null | awk 'NR==2 {{print int($4/1024)}}')\n"
        "if dmesg > /dev/null 2>&1; then dm=true; "
        "oom=$(dmesg 2>/dev/null | grep -i -E 'out of memory|oom-kill|killed process' "
        f"| tail -n 1 | head -c 2000 | {_JSON_STRING_FILTER}); "
        "else dm=false; oom=; fi\n"
        'if [ -n "$oom" ]; then oom="\\"$oom\\""; else oom=null; fi\n'
        f"if [ -f {q(layout.cancelled_marker)} ]; then cancelled=true; else cancelled=false; fi\n"
        f'printf \'{{"stage": "{stage}", "running": %s, "pid": %s, "exit_code": %s, '
        '"log_size": %s, "disk_free_mb": %s, "dmesg_readable": %s, "oom_hint": %s, '
        '"cancelled": %s, "now": %s, "progress": %s}\\n\' '
        '"$running" "${pid:-null}" "${ec:-null}" "${logsize:-0}" "${free:-null}" "$dm" '
        '"$oom" "$cancelled" "$(date +%s)" "$prog"\n'
    )


POLL_TAIL_LINES = 60
"""Log lines the running step's poll reads (failure reasons and trainer metrics use them)."""

POLL_MAX_OUTPUT_BYTES = LOG_TAIL_MAX_BYTES + 2 * PROGRESS_MAX_BYTES + 2 * 2000 + 4096
"""The bound to pass to ``exec`` for :func:`poll_script`: the tail, the progress text (its
JSON escaping at most doubles it), the OOM hint and the status fields all fit, so nothing the
parser needs is ever cut (the runner keeps the newest bytes and the status comes last)."""

_NONCE_RE = re.compile(r"^[0-9a-f]{16,64}$")


def poll_marker(nonce: str) -> str:
    """The line separating the log tail from the status JSON in :func:`poll_script` output."""
    return f"===gpubot-status-{nonce}==="


def _seen_pair(value: tuple[int, int] | None) -> str:
    if value is None:
        return "none"
    size, mtime = value
    for v in (size, mtime):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError("seen size/mtime must be non-negative ints")
    return f"{size}:{mtime}"


def poll_script(
    layout: RemoteLayout,
    *,
    nonce: str,
    seen_log: tuple[int, int] | None = None,
    seen_progress: tuple[int, int] | None = None,
    tail_lines: int = POLL_TAIL_LINES,
    tail_max_bytes: int = LOG_TAIL_MAX_BYTES,
) -> str:
    """One round trip for the running job: process state, exit code, progress, log tail.

    Prints the log tail (as :func:`tail_log_script`: at most ``tail_lines`` lines within
    ``tail_max_bytes`` bytes), then a newline and the line :func:`poll_marker` (``nonce``),
    then one JSON line (parse the whole output with ``parsing.parse_poll``): the keys of
    :func:`status_script` plus ``log_mtime``, ``progress_size``, ``progress_mtime`` (epoch
    seconds; 0 when the file is absent), ``tail_included``, ``progress_included`` and
    ``checkpoints_sig`` (a checksum of the names, sizes and mtimes two levels deep in the
    checkpoint dir, ``absent`` without one: when it is unchanged no checkpoint appeared or
    completed, so the hashing listing of :func:`list_checkpoints_script` can be skipped).

    Reads less when nothing changed: ``seen_log`` / ``seen_progress`` are the ``(size,
    mtime)`` of the log / progress file at the previous poll. The tail is skipped when the log
    still has that size and mtime *and* the job is running (a stopped job always gets its
    tail: failure reasons quote it); the progress text is skipped (``null``) when the progress
    file is unchanged and the job is running (a stopped job always gets it: mtimes are whole
    seconds, and a last report of the same size written within the second of the one before
    looked unchanged, so a finished job kept its next-to-last step).
    ``dmesg`` is read only when the job is not running. Every job-written
    file is read with a byte bound on the instance; no caller value reaches the shell except
    the layout's quoted paths, the hex ``nonce`` and the integers above.

    Raises:
        ValueError: ``nonce`` is not 16-64 lowercase hex digits, a seen value is not a pair
            of non-negative ints, or ``tail_lines``/``tail_max_bytes`` is not positive.
    """
    if not _NONCE_RE.match(nonce):
        raise ValueError("nonce must be 16-64 lowercase hex digits")
    for name, value in (("tail_lines", tail_lines), ("tail_max_bytes", tail_max_bytes)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int")
    pid_file = q(layout.pid_file())
    exit_file = q(layout.exit_code_file())
    log = q(layout.log_file())
    progress = q(layout.progress_file)
    read_ec = _read_small(exit_file, "tr -cd '0-9-'")
    status_format = (
        '{"stage": "job", "running": %s, "pid": %s, "exit_code": %s, "log_size": %s, '
        '"log_mtime": %s, "progress_size": %s, "progress_mtime": %s, "tail_included": %s, '
        '"progress_included": %s, "disk_free_mb": %s, "dmesg_readable": %s, "oom_hint": %s, '
        '"cancelled": %s, "checkpoints_sig": "%s", "now": %s, "progress": %s}\\n'
    )
    return (
        f"pid=$({_read_small(pid_file, 'tr -cd 0-9')})\n"
        f"ec=$({read_ec})\n"
        "running=false\n"
        'if [ -n "$pid" ] && [ -z "$ec" ] && kill -0 "$pid" 2>/dev/null; then running=true; fi\n'
        + _settle_exit_code(exit_file, read_ec)
        + f"set -- $(stat -c '%s %Y' {log} 2>/dev/null)\n"
        "logsize=${1:-0}; logmtime=${2:-0}\n"
        f"set -- $(stat -c '%s %Y' {progress} 2>/dev/null)\n"
        "psize=${1:-0}; pmtime=${2:-0}\n"
        "tail_in=false\n"
        f'if [ "$running" != true ] || [ "$logsize:$logmtime" != {_seen_pair(seen_log)} ]; then\n'
        "tail_in=true\n"
        + _tail_lines(log, tail_lines, tail_max_bytes)
        + "fi\n"
        "prog=null; prog_in=false\n"
        f'if [ -f {progress} ] && {{ [ "$running" != true ] '
        f'|| [ "$psize:$pmtime" != {_seen_pair(seen_progress)} ]; }}; then\n'
        "  prog_in=true\n"
        f'  prog="\\"$(head -c {PROGRESS_MAX_BYTES} {progress} | {_JSON_STRING_FILTER})\\""\n'
        "fi\n"
        f"free=$(df -Pk {q(layout.job_dir)} 2>/dev/null | awk 'NR==2 {{print int($4/1024)}}')\n"
        "dm=false; oom=\n"
        'if [ "$running" != true ] && dmesg > /dev/null 2>&1; then dm=true; '
        "oom=$(dmesg 2>/dev/null | grep -i -E 'out of memory|oom-kill|killed process' "
        f"| tail -n 1 | head -c 2000 | {_JSON_STRING_FILTER}); "
        "fi\n"
        'if [ -n "$oom" ]; then oom="\\"$oom\\""; else oom=null; fi\n'
        f"if [ -f {q(layout.cancelled_marker)} ]; then cancelled=true; else cancelled=false; fi\n"
        f"if [ -d {q(layout.checkpoint_dir)} ]; then ck=$({{ find {q(layout.checkpoint_dir)} "
        "-maxdepth 2 -exec stat -c '%n %s %Y' {} + 2>/dev/null "
        '|| echo "unreadable $$ $(date +%s%N)"; } | cksum | tr -cd \'0-9 \'); '
        "else ck=absent; fi\n"
        f"printf '\\n%s\\n' {q(poll_marker(nonce))}\n"
        f"printf {q(status_format)} "
        '"$running" "${pid:-null}" "${ec:-null}" "$logsize" "$logmtime" "$psize" "$pmtime" '
        '"$tail_in" "$prog_in" "${free:-null}" "$dm" "$oom" "$cancelled" "$ck" "$(date +%s)" '
        '"$prog"\n'
    )


def tail_log_script(
    layout: RemoteLayout,
    lines: int,
    *,
    stage: Stage = "job",
    max_bytes: int = LOG_TAIL_MAX_BYTES,
) -> str:
    """Print the last ``lines`` lines of the stage's log within its last ``max_bytes`` bytes
    (nothing when there is no log; exit status 0).

    Bounded by bytes, not lines: the output is at most ``max_bytes`` bytes, however long the
    log's lines are. Lines are whole (the partial oldest line of the byte window is dropped),
    except when the newest line alone is longer than the window: then its newest
    ``max_bytes`` bytes are printed.

    Raises:
        ValueError: ``lines`` or ``max_bytes`` is not a positive int.
    """
    for name, value in (("lines", lines), ("max_bytes", max_bytes)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int")
    return _tail_lines(q(layout.log_file(stage)), lines, max_bytes) + "exit 0\n"


def list_checkpoints_script(layout: RemoteLayout) -> str:
    """Print one JSON line per regular file under the checkpoint dir, sorted by path.

    Each line is ``{"path": <relative to the checkpoint dir>, "size": bytes, "sha256": hex,
    "mtime": epoch seconds}`` (parse with ``parsing.parse_checkpoint_listing``). Files that
    vanish while being listed (a job rotating checkpoints) are skipped. Prints nothing when
    the directory is empty or absent.
    """
    return (
        f"D={q(layout.checkpoint_dir)}\n"
        '[ -d "$D" ] || exit 0\n'
        'cd "$D" || exit 0\n'
        "find . -type f | LC_ALL=C sort | while IFS= read -r f; do\n"
        '  sum=$(sha256sum "$f" 2>/dev/null | cut -d" " -f1) || continue\n'
        '  [ -n "$sum" ] || continue\n'
        '  size=$(stat -c %s "$f" 2>/dev/null) || continue\n'
        '  mtime=$(stat -c %Y "$f" 2>/dev/null) || continue\n'
        f'  rel=$(printf %s "${{f#./}}" | {_JSON_STRING_FILTER})\n'
        '  printf \'{"path": "%s", "size": %s, "sha256": "%s", "mtime": %s}\\n\' '
        '"$rel" "$size" "$sum" "$mtime"\n'
        "done\n"
    )


@dataclass(frozen=True, slots=True)
class UploadItem:
    """Upload ``remote_path`` to ``url`` (a presigned PUT URL).

    When ``sha256`` is given the file must still have that digest (else it is reported as
    changed and not uploaded) and it is sent as ``x-amz-meta-sha256`` (sign the URL with it).
    """

    remote_path: str
    url: str
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class DownloadItem:
    """Download ``url`` (a presigned GET URL) to ``remote_path``, verifying ``sha256``."""

    url: str
    remote_path: str
    sha256: str


def _check_url(url: str) -> None:
    if not url.startswith(("http://", "https://")) or _URL_FORBIDDEN_RE.search(url):
        # never include the URL itself: it carries a signature
        raise ValueError("presigned URL must be http(s) without spaces, quotes or backslashes")


def _check_sha(sha: str) -> None:
    if not _SHA256_RE.match(sha):
        raise ValueError("sha256 must be 64 lowercase hex digits")


def upload_files_script(
    pairs: Iterable[UploadItem | tuple[str, str] | tuple[str, str, str | None]],
) -> str:
    """Upload files with ``curl -fsS -T FILE -H 'Content-Type: application/octet-stream'``.

    Prints one JSON line per file: ``{"path", "ok": bool, "size", "sha256", "error"}`` where
    ``error`` is ``null``, ``"missing"``, ``"changed"`` (sha256 differs from the expected one)
    or ``"upload"`` (curl failed; its message, which never contains the URL's query string,
    goes to stderr). Exits 0 when every file was uploaded, 1 otherwise. Each URL reaches curl
    through its config on stdin (``-K -``), so it is not in curl's argv; the script never
    prints it.

    Raises:
        ValueError: a URL or sha256 is malformed (the message does not include the URL).
    """
    items = [p if isinstance(p, UploadItem) else UploadItem(*p) for p in pairs]
    lines = ["failed=0"]
    for item in items:
        _check_url(item.url)
        if item.sha256 is not None:
            _check_sha(item.sha256)
        header = (
            f" -H {q('x-amz-meta-sha256: ' + item.sha256)}" if item.sha256 is not None else ""
        )
        lines.append(
            f"f={q(item.remote_path)}; u={q(item.url)}; want={q(item.sha256 or '')}\n"
            f'rel=$(printf %s "$f" | {_JSON_STRING_FILTER})\n'
            'if [ ! -f "$f" ]; then\n'
            '  printf \'{"path": "%s", "ok": false, "size": null, "sha256": null, '
            '"error": "missing"}\\n\' "$rel"; failed=1\n'
            "else\n"
            '  sum=$(sha256sum "$f" | cut -d" " -f1); size=$(stat -c %s "$f")\n'
            '  if [ -n "$want" ] && [ "$sum" != "$want" ]; then err=changed\n'
            "  elif printf 'url = \"%s\"\\n' \"$u\" | curl -fsS --retry 2 "
            "--connect-timeout 20 -K - -T \"$f\" "
            f"-H 'Content-Type: application/octet-stream'{header} -o /dev/null; then err=\n"
            "  else err=upload\n"
            "  fi\n"
            '  if [ -z "$err" ]; then ok=true; e=null\n'
            '  else ok=false; e="\\"$err\\""; failed=1; fi\n'
            '  printf \'{"path": "%s", "ok": %s, "size": %s, "sha256": "%s", "error": %s}\\n\' '
            '"$rel" "$ok" "$size" "$sum" "$e"\n'
            "fi"
        )
    lines.append("u=\nexit $failed")
    return "\n".join(lines) + "\n"


def download_files_script(
    pairs: Iterable[DownloadItem | tuple[str, str, str]],
) -> str:
    """Download each URL to its path (parents created), verifying sha256; all or nothing.

    Each file is fetched to ``<path>.part`` and moved into place only when its sha256 matches.
    On the first failure the script stops: a checksum mismatch prints ``sha256 mismatch for
    <path>: expected <hex>, got <hex>`` to stderr and exits :data:`DOWNLOAD_SHA_MISMATCH_EXIT`;
    a failed download prints ``download failed for <path>`` and exits 2. Prints
    ``ok <path>`` per verified file. URLs go to curl via ``-K -`` and are never printed.

    Raises:
        ValueError: a URL or sha256 is malformed (the message does not include the URL).
    """
    items = [p if isinstance(p, DownloadItem) else DownloadItem(*p) for p in pairs]
    lines: list[str] = []
    for item in items:
        _check_url(item.url)
        _check_sha(item.sha256)
        lines.append(
            f"f={q(item.remote_path)}; u={q(item.url)}; want={q(item.sha256)}\n"
            'mkdir -p "$(dirname "$f")" || exit 2\n'
            "if ! printf 'url = \"%s\"\\n' \"$u\" | curl -fsS --retry 2 --connect-timeout 20 "
            '-K - -o "$f.part"; then\n'
            '  rm -f "$f.part"; echo "download failed for $f" >&2; exit 2\n'
            "fi\n"
            'got=$(sha256sum "$f.part" | cut -d" " -f1)\n'
            'if [ "$got" != "$want" ]; then\n'
            '  rm -f "$f.part"\n'
            '  echo "sha256 mismatch for $f: expected $want, got $got" >&2\n'
            f"  exit {DOWNLOAD_SHA_MISMATCH_EXIT}\n"
            "fi\n"
            'mv -f "$f.part" "$f" && echo "ok $f"'
        )
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


def kill_script(
    layout: RemoteLayout, *, stage: Stage = "job", grace_seconds: float = 10.0
) -> str:
    """Stop the stage: SIGTERM its process group, SIGKILL what is left after the grace time.

    Marks the job cancelled (``.control/cancelled``) and, when the process did not record an
    exit status itself, writes 143 to the exit-code file so the stage reads as finished.
    Prints ``not-running`` when there was nothing to stop, else ``stopped <pid>`` or
    ``killed <pid>`` (SIGKILL was needed). Safe to repeat.
    """
    pid_file = q(layout.pid_file(stage))
    exit_file = q(layout.exit_code_file(stage))
    steps = max(1, int(grace_seconds * 5))
    cancel = f"touch {q(layout.cancelled_marker)}\n" if stage == "job" else ""
    return (
        f"mkdir -p {q(layout.control_dir)}\n"
        + cancel
        + f"pid=$({_read_small(pid_file, 'tr -cd 0-9')})\n"
        'alive() { kill -0 -"$1" 2>/dev/null || kill -0 "$1" 2>/dev/null; }\n'
        'if [ -z "$pid" ] || ! alive "$pid"; then\n'
        f'  [ -n "$pid" ] && [ ! -f {exit_file} ] && echo 143 > {exit_file}\n'
        "  echo not-running; exit 0\n"
        "fi\n"
        'kill -TERM -"$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null\n'
        "i=0\n"
        f'while alive "$pid" && [ $i -lt {steps} ]; do sleep 0.2; i=$((i+1)); done\n'
        "how=stopped\n"
        'if alive "$pid"; then\n'
        '  kill -KILL -"$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null; how=killed\n'
        '  i=0; while alive "$pid" && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done\n'
        "fi\n"
        f"[ -f {exit_file} ] || echo 143 > {exit_file}\n"
        'echo "$how $pid"\n'
    )


# -- packing the workdir ----------------------------------------------------------------------


def _excluded(rel: str, is_dir: bool, patterns: Sequence[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    for pattern in patterns:
        dir_only = pattern.endswith("/")
        pat = pattern.rstrip("/")
        if not pat or (dir_only and not is_dir):
            continue
        if "/" in pat:
            if fnmatchcase(rel, pat.lstrip("/")):
                return True
        elif fnmatchcase(name, pat):
            return True
    return False


def pack_workdir(
    path: Path, exclude: Sequence[str] = DEFAULT_EXCLUDE, *, max_bytes: int | None = None
) -> bytes:
    """Pack the directory ``path`` into an in-memory tar.gz, honouring ``exclude`` globs.

    Glob rules (rsync-like): a pattern without ``/`` matches any file or directory *name* at
    any depth (``*.pyc``, ``__pycache__``); a pattern containing ``/`` matches the path
    relative to ``path`` (``models/*/pytorch_model.bin``); a trailing ``/`` restricts it to
    directories (an excluded directory is skipped with everything below it). Symlinks are
    stored as links; sockets, FIFOs and devices are skipped.

    Deterministic: entries in sorted order, owner 0/0 with empty names, gzip mtime 0 (file
    mtimes and modes are kept). Archive paths are relative (``./`` free).

    Raises:
        ValueError: ``path`` is not a directory, or the archive exceeds ``max_bytes``.
    """
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(entry: Path, rel: str) -> None:
            info = tar.gettarinfo(str(entry), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isreg():
                with open(entry, "rb") as fh:
                    tar.addfile(info, fh)
            elif info.isdir() or info.issym():
                tar.addfile(info)

        def walk(directory: Path, prefix: str) -> None:
            for entry in sorted(directory.iterdir(), key=lambda p: p.name):
                rel = f"{prefix}{entry.name}"
                st = entry.lstat()
                is_dir = stat.S_ISDIR(st.st_mode)
                if _excluded(rel, is_dir, exclude):
                    continue
                if not (is_dir or stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                    continue
                add(entry, rel)
                if is_dir:
                    walk(entry, rel + "/")
                if max_bytes is not None and raw.tell() > max_bytes:
                    raise ValueError(f"workdir archive exceeds {max_bytes} bytes")

        walk(path, "")
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    data = out.getvalue()
    if max_bytes is not None and len(data) > max_bytes:
        raise ValueError(f"workdir archive exceeds {max_bytes} bytes")
    return data
