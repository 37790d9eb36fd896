"""The control scripts, executed for real over SSH against sshd (and moto for transfers)."""

from __future__ import annotations

import hashlib
import io
import json
import shlex
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from gpubot.jobs import job_dir
from gpubot.remote import control
from gpubot.remote.control import RemoteLayout
from gpubot.remote.parsing import (
    RemoteStatus,
    diagnose,
    latest_trainer_metrics,
    newest_complete_checkpoint,
    parse_checkpoint_listing,
    parse_status,
)
from gpubot.remote.ssh import ParamikoRunner
from gpubot.storage.s3 import S3Store
from tests.fixtures.sshd import SSHDServer

T = TypeVar("T")
PYTHON = shlex.quote(sys.executable)  # the remote is this machine: use a python with numpy


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Poll ``probe`` until it returns a truthy value, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)  # polling interval, bounded by the deadline


def run(runner: ParamikoRunner, script: str, *, ok: bool = True, timeout: float = 60) -> str:
    result = runner.exec(script, timeout_seconds=timeout)
    if ok:
        assert result.ok, f"exit {result.exit_status}: {result.stderr}"
    return result.stdout


def status(runner: ParamikoRunner, layout: RemoteLayout, stage: control.Stage = "job"
           ) -> RemoteStatus:
    return parse_status(run(runner, control.status_script(layout, stage=stage)))


@pytest.fixture
def remote(sshd: SSHDServer) -> Iterator[tuple[ParamikoRunner, RemoteLayout]]:
    """A connection plus a layout for job ``job-1`` under the discovered remote root."""
    runner = ParamikoRunner(target=sshd.target)
    root = run(
        runner,
        f"export GPUBOT_REMOTE_ROOT={shlex.quote(str(sshd.root))}; "
        + control.DISCOVER_ROOT_COMMAND,
    )
    layout = control.remote_layout(root, "job-1")
    run(runner, control.prepare_dirs_script(layout))
    try:
        yield runner, layout
    finally:
        # never leave a detached job behind
        runner.close()
        with ParamikoRunner(target=sshd.target) as cleanup:
            cleanup.exec(control.kill_script(layout, grace_seconds=1))
            cleanup.exec(control.kill_script(layout, stage="setup", grace_seconds=1))


def deploy_train_job(runner: ParamikoRunner, layout: RemoteLayout) -> None:
    archive = control.pack_workdir(job_dir("train"))
    runner.put_bytes(archive, layout.archive_path(), mode=0o600)
    run(runner, control.unpack_archive_script(layout, layout.archive_path()))


def test_discovered_root_and_layout(remote: tuple[ParamikoRunner, RemoteLayout],
                                    sshd: SSHDServer) -> None:
    runner, layout = remote
    assert layout.root == str(sshd.root)
    assert layout.workspace == f"{sshd.root}/gpubot/job-1/work"
    for d in ("work", "checkpoints", "results", ".control"):
        assert (sshd.root / "gpubot" / "job-1" / d).is_dir()
    assert run(runner, control.DISCOVER_ROOT_COMMAND) == "/workspace"  # the default


def test_env_exports_deliver_hostile_values_literally(
    remote: tuple[ParamikoRunner, RemoteLayout],
) -> None:
    runner, layout = remote
    hostile = "a'b\"c $(touch /tmp/gpubot-pwned) `id` ; rm -rf / \\ \n second line"
    env = control.env_exports(layout, {"lr": "2e-5", "note": hostile}, "/x/checkpoint-3")
    out = run(runner, env + 'printf "%s|%s|%s|%s" "$GPUBOT_PARAM_LR" "$GPUBOT_PARAM_NOTE" '
                            '"$GPUBOT_RESUME_FROM" "$GPUBOT_PROGRESS_FILE"')
    assert out == f"2e-5|{hostile}|/x/checkpoint-3|{layout.progress_file}"
    assert not Path("/tmp/gpubot-pwned").exists()
    no_resume = run(runner, control.env_exports(layout, {}, None)
                    + 'printf %s "${GPUBOT_RESUME_FROM-unset}"')
    assert no_resume == "unset"


def test_train_job_detached_survives_disconnect_then_kill_and_resume(
    remote: tuple[ParamikoRunner, RemoteLayout], sshd: SSHDServer
) -> None:
    runner, layout = remote
    deploy_train_job(runner, layout)
    params = {"steps": "150", "step_seconds": "0.02", "checkpoint_every": "10",
              "batch_size": "32", "log_every": "5"}
    env = control.env_exports(layout, params, None)
    start = control.start_detached_script(layout, f"{PYTHON} train.py", env)
    first = run(runner, start)
    assert first.startswith("started ")
    runner.close()  # the job must survive the SSH connection

    with ParamikoRunner(target=sshd.target) as again:
        s1 = wait_for(lambda: (s := status(again, layout)).progress and s, "progress")
        assert s1.running and s1.pid is not None and s1.exit_code is None
        assert run(again, start).startswith(f"already-running {s1.pid}")  # idempotent
        assert s1.progress is not None and s1.progress.step is not None
        step1 = s1.progress.step
        s2 = wait_for(
            lambda: (s := status(again, layout)).progress
            and s.progress.step is not None and s.progress.step > step1 + 5 and s,
            "progress to advance",
        )
        assert s2.progress is not None and s2.progress.total_steps == 150
        assert s2.disk_free_mb is not None and s2.disk_free_mb > 0
        tail = run(again, control.tail_log_script(layout, 50))
        metrics = latest_trainer_metrics(tail)
        assert metrics is not None and "loss" in metrics and "epoch" in metrics

        killed = run(again, control.kill_script(layout, grace_seconds=5))
        assert killed.startswith(("stopped", "killed"))
        s3 = status(again, layout)
        assert not s3.running and s3.exit_code == 143 and s3.cancelled
        assert run(again, control.kill_script(layout)).strip() == "not-running"

        files = parse_checkpoint_listing(run(again, control.list_checkpoints_script(layout)))
        newest = newest_complete_checkpoint(files, job_exited=True)
        assert newest is not None
        resume_step = int(newest.split("-")[1])
        assert resume_step >= 10
        for f in files:  # the listing's digests are the files' real digests
            local = sshd.root / "gpubot" / "job-1" / "checkpoints" / f.path
            assert hashlib.sha256(local.read_bytes()).hexdigest() == f.sha256

        env2 = control.env_exports(layout, params, f"{layout.checkpoint_dir}/{newest}")
        assert run(again, control.start_detached_script(layout, f"{PYTHON} train.py", env2)
                   ).startswith("started ")
        s4 = status(again, layout)
        assert not s4.cancelled  # a new start clears the cancel marker
        done = wait_for(lambda: (s := status(again, layout)).exit_code is not None and s,
                        "the resumed job to finish")
        assert done.exit_code == 0 and not done.running
        assert done.progress is not None and done.progress.step == 150
        log = run(again, control.tail_log_script(layout, 400))
        assert f"resuming from {layout.checkpoint_dir}/{newest} at step {resume_step}" in log
        assert diagnose(log, done.exit_code, done.running) is None
    results = json.loads((sshd.root / "gpubot/job-1/results/metrics.json").read_text())
    assert results["steps"] == 150 and results["resumed_from"].endswith(newest)
    assert 0.5 < results["accuracy"] <= 1.0


def test_failing_job_records_exit_code_and_is_diagnosed(
    remote: tuple[ParamikoRunner, RemoteLayout],
) -> None:
    runner, layout = remote
    deploy_train_job(runner, layout)
    env = control.env_exports(layout, {"steps": "50", "fail_at_step": "4",
                                       "step_seconds": "0"}, None)
    run(runner, control.start_detached_script(layout, f"{PYTHON} train.py", env))
    done = wait_for(lambda: (s := status(runner, layout)).exit_code is not None and s, "exit")
    assert done.exit_code == 3 and not done.running and not done.cancelled
    message = diagnose(run(runner, control.tail_log_script(layout, 20)), 3, False)
    assert message is not None and "exited with status 3" in message
    assert "simulated failure at step 4" in message


def test_process_gone_without_exit_code(remote: tuple[ParamikoRunner, RemoteLayout]) -> None:
    runner, layout = remote
    run(runner, control.start_detached_script(layout, "echo working; sleep 60", ""))
    s = wait_for(lambda: (s := status(runner, layout)).running and s, "running")
    assert s.pid is not None
    run(runner, f"kill -KILL -{s.pid}")  # like the OOM killer or a host restart
    gone = wait_for(lambda: (g := status(runner, layout)).gone and g, "the process to vanish")
    assert gone.exit_code is None and not gone.running
    message = diagnose(run(runner, control.tail_log_script(layout, 5)), None, False)
    assert message is not None and "without recording an exit code" in message


def test_setup_stops_at_first_failure_with_log_tail(
    remote: tuple[ParamikoRunner, RemoteLayout], sshd: SSHDServer
) -> None:
    runner, layout = remote
    script = control.setup_script(
        layout, ["echo one > one.txt", "echo about to fail; exit 5", "touch never.txt"]
    )
    result = runner.exec(script)
    assert result.exit_status == 5
    assert "about to fail" in result.stderr
    work = sshd.root / "gpubot/job-1/work"
    assert (work / "one.txt").read_text() == "one\n" and not (work / "never.txt").exists()
    assert runner.exec(control.setup_script(layout, ["true", "echo fine"])).ok

    # the same script detached, as the setup stage
    run(runner, control.start_detached_script(
        layout, control.setup_script(layout, ["echo detached-setup", "exit 9"]), "",
        stage="setup"))
    s = wait_for(lambda: (s := status(runner, layout, "setup")).exit_code is not None and s,
                 "setup to end")
    assert s.exit_code == 9 and s.stage == "setup"
    tail = run(runner, control.tail_log_script(layout, 20, stage="setup"))
    message = diagnose(tail, s.exit_code, s.running, stage="setup")
    assert message is not None and message.startswith("Setup failed (exit 9)")
    assert "detached-setup" in message


def test_git_clone_checks_out_the_ref(remote: tuple[ParamikoRunner, RemoteLayout],
                                      tmp_path: Path, sshd: SSHDServer) -> None:
    runner, layout = remote
    src = tmp_path / "src"
    src.mkdir()
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t", "-C", str(src)]
    subprocess.run(["git", "init", "-q", "-b", "main", str(src)], check=True)
    (src / "train.py").write_text("print('v1')\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "v1"], check=True)
    subprocess.run([*git, "tag", "v1"], check=True)
    (src / "train.py").write_text("print('v2')\n")
    subprocess.run([*git, "commit", "-q", "-am", "v2"], check=True)
    repo = f"file://{src}"
    run(runner, control.git_clone_script(layout, repo, "v1"))
    work = sshd.root / "gpubot/job-1/work"
    assert (work / "train.py").read_text() == "print('v1')\n"
    run(runner, control.git_clone_script(layout, repo, "main"))  # idempotent re-checkout
    assert (work / "train.py").read_text() == "print('v2')\n"
    with pytest.raises(ValueError):
        control.git_clone_script(layout, "--upload-pack=evil", "main")


def test_checkpoints_round_trip_through_presigned_urls(
    remote: tuple[ParamikoRunner, RemoteLayout], sshd: SSHDServer, s3_store: S3Store
) -> None:
    runner, layout = remote
    ckpt = sshd.root / "gpubot/job-1/checkpoints/checkpoint-20"
    ckpt.mkdir(parents=True)
    (ckpt / "model.bin").write_bytes(bytes(range(256)) * 4000)  # 1 MB of every byte value
    (ckpt / "state.json").write_text('{"step": 20}')
    (ckpt / ".complete").write_text("")
    files = parse_checkpoint_listing(run(runner, control.list_checkpoints_script(layout)))
    assert [f.path for f in files] == ["checkpoint-20/.complete", "checkpoint-20/model.bin",
                                      "checkpoint-20/state.json"]
    assert newest_complete_checkpoint(files) == "checkpoint-20"

    items = [
        control.UploadItem(
            f"{layout.checkpoint_dir}/{f.path}",
            s3_store.presign_put(f"job-1/checkpoints/{f.path}", sha256=f.sha256),
            f.sha256,
        )
        for f in files
    ]
    result = runner.exec(control.upload_files_script(items))
    assert result.ok, result.stderr
    reports = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["ok"] for r in reports] == [True, True, True]
    assert "X-Amz-Signature" not in result.stdout + result.stderr
    stored = {o.key: o for o in s3_store.list("job-1/checkpoints/")}
    for f in files:
        obj = stored[f"job-1/checkpoints/{f.path}"]
        assert (obj.size_bytes, obj.sha256) == (f.size, f.sha256)
        data = s3_store.get_bytes(f"job-1/checkpoints/{f.path}")
        assert data == (ckpt / f.path.split("/")[1]).read_bytes()

    # restore into a fresh location, verified
    restore = f"{layout.job_dir}/restore"
    downloads = [
        control.DownloadItem(s3_store.presign_get(f"job-1/checkpoints/{f.path}"),
                             f"{restore}/{f.path}", f.sha256)
        for f in files
    ]
    result = runner.exec(control.download_files_script(downloads))
    assert result.ok, result.stderr
    for f in files:
        restored = sshd.root / "gpubot/job-1/restore" / f.path
        assert hashlib.sha256(restored.read_bytes()).hexdigest() == f.sha256

    # a wrong checksum fails clearly and leaves no file behind
    wrong = "0" * 64
    bad = control.DownloadItem(downloads[1].url, f"{restore}/bad/model.bin", wrong)
    result = runner.exec(control.download_files_script([bad]))
    assert result.exit_status == control.DOWNLOAD_SHA_MISMATCH_EXIT
    assert f"sha256 mismatch for {restore}/bad/model.bin: expected {wrong}" in result.stderr
    assert "X-Amz-Signature" not in result.stdout + result.stderr
    assert not (sshd.root / "gpubot/job-1/restore/bad/model.bin").exists()
    assert not (sshd.root / "gpubot/job-1/restore/bad/model.bin.part").exists()


def test_upload_reports_missing_and_changed_files(
    remote: tuple[ParamikoRunner, RemoteLayout], sshd: SSHDServer, s3_store: S3Store
) -> None:
    runner, layout = remote
    path = sshd.root / "gpubot/job-1/results/out.txt"
    path.write_text("hello")
    stale_sha = hashlib.sha256(b"older content").hexdigest()
    items = [
        (str(path), s3_store.presign_put("r/out.txt")),
        (f"{path}.missing", s3_store.presign_put("r/missing")),
        (str(path), s3_store.presign_put("r/changed", sha256=stale_sha), stale_sha),
    ]
    result = runner.exec(control.upload_files_script(items))
    assert result.exit_status == 1
    reports = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["ok"], r["error"]) for r in reports] == [
        (True, None), (False, "missing"), (False, "changed")]
    assert s3_store.get_bytes("r/out.txt") == b"hello"
    assert [o.key for o in s3_store.list("r/")] == ["r/out.txt"]


def test_url_validation_never_echoes_the_url() -> None:
    secret_url = 'https://s3.example/k?X-Amz-Signature=abc"; rm -rf /'
    with pytest.raises(ValueError) as info:
        control.upload_files_script([("/x", secret_url)])
    assert "Signature" not in str(info.value)


def test_pack_workdir_excludes_and_is_deterministic(tmp_path: Path) -> None:
    src = tmp_path / "proj"
    (src / "pkg" / "__pycache__").mkdir(parents=True)
    (src / ".git").mkdir()
    (src / "models" / "bert").mkdir(parents=True)
    (src / "train.py").write_text("print(1)\n")
    (src / "pkg" / "mod.py").write_text("x = 1\n")
    (src / "pkg" / "mod.pyc").write_bytes(b"\0")
    (src / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    (src / ".git" / "HEAD").write_text("ref\n")
    (src / ".env").write_text("SECRET=1\n")
    (src / "models" / "bert" / "pytorch_model.bin").write_bytes(b"big")
    (src / "models" / "bert" / "config.json").write_text("{}")
    (src / "results").write_text("a file named like an excluded dir is kept\n")
    exclude = [*control.DEFAULT_EXCLUDE, "models/*/pytorch_model.bin"]
    data = control.pack_workdir(src, exclude)
    assert data == control.pack_workdir(src, exclude)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        assert all(m.uid == 0 and m.uname == "" for m in tar.getmembers())
    assert names == ["models", "models/bert", "models/bert/config.json", "pkg", "pkg/mod.py",
                     "results", "train.py"]
    with pytest.raises(ValueError):
        control.pack_workdir(src, exclude, max_bytes=10)


def test_builders_reject_bad_identifiers() -> None:
    with pytest.raises(ValueError):
        control.remote_layout("relative/root", "job-1")
    with pytest.raises(ValueError):
        control.remote_layout("/workspace", "../escape")
    layout = control.remote_layout("/workspace/", "job-1")
    assert layout.job_dir == "/workspace/gpubot/job-1"
    with pytest.raises(ValueError):
        control.env_exports(layout, {"bad-name": "1"}, None)
    with pytest.raises(ValueError):
        control.env_exports(layout, {"lr": "1", "LR": "2"}, None)
    with pytest.raises(ValueError):
        control.tail_log_script(layout, 0)
    with pytest.raises(ValueError):
        control.download_files_script([("https://x/y", "/p", "not-a-sha")])
