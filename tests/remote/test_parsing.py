"""Parsers on literal captured text."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from gpubot.remote.parsing import (
    CheckpointFile,
    checkpoint_files,
    diagnose,
    latest_trainer_metrics,
    newest_complete_checkpoint,
    parse_checkpoint_listing,
    parse_progress,
    parse_status,
    parse_trainer_log,
)

STATUS_RUNNING = (
    '{"stage": "job", "running": true, "pid": 4711, "exit_code": null, "log_size": 5120, '
    '"disk_free_mb": 48213, "dmesg_readable": false, "oom_hint": null, "cancelled": false, '
    '"now": 1767225600, "progress": "{  \\"epoch\\": 1.5,  \\"step\\": 300,  '
    '\\"metrics\\": {    \\"loss\\": 0.4123,    \\"note\\": \\"warm\\"  },  '
    '\\"timestamp\\": \\"2026-01-01T00:00:00.123456\\"}"}\n'
)
STATUS_GONE = (
    '{"stage": "job", "running": false, "pid": 4711, "exit_code": null, "log_size": 0, '
    '"disk_free_mb": null, "dmesg_readable": true, "oom_hint": "[12345.6] Out of memory: '
    'Killed process 4712 (python3) total-vm:81234kB", "cancelled": false, "now": 1767225600, '
    '"progress": null}'
)

# captured from a transformers 4.46 Trainer run (tqdm bar with carriage returns included)
TRAINER_LOG = (
    " 10%|█         | 50/500 [00:20<03:01,  2.48it/s]\r"
    "{'loss': 0.6931, 'grad_norm': 1.234, 'learning_rate': 2e-05, 'epoch': 0.1}\n"
    " 20%|██        | 100/500 [00:40<02:41,  2.48it/s]\r"
    "{'loss': 0.5312, 'grad_norm': 0.987, 'learning_rate': 1.8e-05, 'epoch': 0.2}\n"
    "{'eval_loss': 0.4876, 'eval_accuracy': 0.81, 'eval_runtime': 3.2, 'epoch': 0.2}\n"
    "Saving model checkpoint to /workspace/gpubot/j/checkpoints/checkpoint-100\n"
    "{'loss': 0.4102, 'learning_rate': 1.6e-05, 'epoch': 0.3}\n"
    "{'train_runtime': '0:03:21', 'epoch': 1.0}\n"
    "config = {'__class__': __import__('os').system('id')}\n"
)


def test_parse_status_running_with_save_progress_style_progress() -> None:
    s = parse_status("some banner\n" + STATUS_RUNNING)
    assert (s.running, s.pid, s.exit_code, s.log_size, s.disk_free_mb) == (
        True, 4711, None, 5120, 48213)
    assert s.progress is not None
    assert (s.progress.step, s.progress.epoch, s.progress.total_steps) == (300, 1.5, None)
    assert s.progress.metrics == {"loss": 0.4123}  # non-numeric metrics dropped
    assert s.progress.at == datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
    assert not s.gone


def test_parse_status_gone_with_oom_hint() -> None:
    s = parse_status(STATUS_GONE)
    assert s.gone and s.progress is None and s.oom_hint is not None
    assert "Out of memory" in s.oom_hint and s.dmesg_readable


def test_parse_status_without_status_line_raises() -> None:
    with pytest.raises(ValueError):
        parse_status("bash: line 1: df: command not found\n")


@pytest.mark.parametrize(
    "text",
    ["", "   ", '{"epoch": 1, "ste', "[1, 2]", '{"foo": "bar"}', "null", "{" * 10000],
)
def test_parse_progress_tolerates_garbage(text: str) -> None:
    assert parse_progress(text) is None


def test_parse_progress_full_contract() -> None:
    p = parse_progress(
        '{"epoch": 2, "step": 50, "total_steps": 200, "metrics": {"loss": 0.25, '
        '"acc": true, "lr": NaN}, "timestamp": "2026-03-01T10:00:00+01:00"}'
    )
    assert p is not None
    assert (p.step, p.total_steps, p.epoch, p.fraction) == (50, 200, 2.0, 0.25)
    assert p.metrics == {"loss": 0.25}  # booleans and NaN are not metrics
    assert p.at == datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def test_trainer_log_lines_newest_wins_and_code_is_never_run() -> None:
    history = parse_trainer_log(TRAINER_LOG)
    assert history[0] == {"loss": 0.6931, "grad_norm": 1.234, "learning_rate": 2e-05,
                          "epoch": 0.1}
    assert len(history) == 5  # the train_runtime line keeps only its numeric 'epoch'
    latest = latest_trainer_metrics(TRAINER_LOG)
    assert latest is not None
    assert latest["loss"] == 0.4102 and latest["eval_loss"] == 0.4876
    assert latest["epoch"] == 1.0
    assert latest_trainer_metrics("no metrics here\n") is None


CUDA_OOM = """Traceback (most recent call last):
  File "/workspace/train.py", line 88, in <module>
    trainer.train()
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total \
capacity of 23.64 GiB of which 1.06 GiB is free.
"""
DISK_FULL = "OSError: [Errno 28] No space left on device: '/workspace/ckpt/checkpoint-300'\n"
NO_CUDA = "AssertionError: Torch not compiled with CUDA enabled\n"
NO_DRIVER = "RuntimeError: Found no NVIDIA driver on your system.\n"
FLASH = "RuntimeError: FlashAttention only supports Ampere GPUs or newer.\n"


@pytest.mark.parametrize(
    ("log", "exit_code", "running", "expected"),
    [
        (CUDA_OOM, 1, False, "CUDA out of memory"),
        (CUDA_OOM, None, True, "CUDA out of memory"),
        (DISK_FULL, 1, False, "Disk full"),
        (NO_CUDA, 1, False, "CUDA is not available"),
        (NO_DRIVER, 1, False, "CUDA is not available"),
        (FLASH, 1, False, "compute capability is below 8.0"),
        ("flash_attn: GPU compute capability 7.5 is not supported\n", 1, False,
         "compute capability is below 8.0"),
        ("step 10\nKilled\n", 137, False, "OOM killer"),
        ("step 10\n", None, False, "without recording an exit code"),
        ("boom\n", 2, False, "exited with status 2"),
    ],
)
def test_diagnose_known_pitfalls(log: str, exit_code: int | None, running: bool,
                                 expected: str) -> None:
    message = diagnose(log, exit_code, running)
    assert message is not None and expected in message


@pytest.mark.parametrize(
    "line",
    ["flashattn" * 29_000, "flash-attn " * 23_000, "{'a" * 87_000, "CUDA " * 52_000],
    ids=["flashattn", "flash-attn", "dict-openers", "cuda-words"],
)
def test_diagnose_and_trainer_parsing_stay_linear_on_a_hostile_line(line: str) -> None:
    # a job's log is untrusted: a full LOG_TAIL_MAX_BYTES window of one adversarial line
    # must not trigger catastrophic regex backtracking (was about 500 s for "flashattn"*N)
    started = time.perf_counter()
    diagnose(line, 1, False)
    parse_trainer_log(line)
    assert time.perf_counter() - started < 5.0  # generous: a linear scan takes ~0.1 s


def test_diagnose_quiet_when_fine() -> None:
    assert diagnose("{'loss': 0.3, 'epoch': 1.0}\n", None, True) is None
    assert diagnose("done\n", 0, False) is None


def test_diagnose_setup_failure_quotes_last_lines() -> None:
    log = "+ pip install -r requirements.txt\nERROR: No matching distribution found for torh\n"
    message = diagnose(log, 1, False, stage="setup")
    assert message is not None and message.startswith("Setup failed (exit 1)")
    assert "No matching distribution found for torh" in message


LISTING = (
    '{"path": "checkpoint-100/model.bin", "size": 10, "sha256": "' + "a" * 64 + '", '
    '"mtime": 1767225600}\n'
    '{"path": "checkpoint-100/.complete", "size": 0, "sha256": "' + "b" * 64 + '", '
    '"mtime": 1767225600}\n'
    '{"path": "checkpoint-200/model.bin", "size": 10, "sha256": "' + "c" * 64 + '", '
    '"mtime": 1767225700}\n'
    "sha256sum: ./checkpoint-300/x: No such file or directory\n"
    '{"path": "broken", "size": "x"}\n'
)


def test_parse_checkpoint_listing() -> None:
    files = parse_checkpoint_listing(LISTING)
    assert [f.path for f in files] == ["checkpoint-100/.complete", "checkpoint-100/model.bin",
                                      "checkpoint-200/model.bin"]
    assert files[1] == CheckpointFile("checkpoint-100/model.bin", 10, "a" * 64, 1767225600)
    assert [f.path for f in checkpoint_files(files, "checkpoint-100")] == [
        "checkpoint-100/.complete", "checkpoint-100/model.bin"]


def test_newest_complete_checkpoint_rules() -> None:
    files = parse_checkpoint_listing(LISTING)
    # 200 has no marker and nothing newer: maybe still being written
    assert newest_complete_checkpoint(files) == "checkpoint-100"
    assert newest_complete_checkpoint(files, job_exited=True) == "checkpoint-200"
    assert newest_complete_checkpoint(["checkpoint-2/a", "checkpoint-10/a"]) == "checkpoint-2"
    assert newest_complete_checkpoint(
        ["checkpoint-2/a", "checkpoint-10/a", "checkpoint-10/.complete"]) == "checkpoint-10"
    assert newest_complete_checkpoint(["checkpoint-5"]) is None
    assert newest_complete_checkpoint(["checkpoint-5.pt", "checkpoint-9.pt"]) == "checkpoint-5.pt"
    assert newest_complete_checkpoint(
        [".tmp-checkpoint-50/model.npz", "logs/x", "checkpoint-x/a", "a/checkpoint-7/b",
         "checkpoint-3.tmp/.complete"]) is None
    assert newest_complete_checkpoint([]) is None
