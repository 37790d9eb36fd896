"""The example jobs run locally as subprocesses, exactly as the instance runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpubot.jobs import job_dir, job_names
from gpubot.jobs.ocr.make_pdfs import expected_pages, make_pdfs, pdf_bytes
from gpubot.remote.parsing import (
    latest_trainer_metrics,
    newest_complete_checkpoint,
    parse_progress,
)

TRAIN = job_dir("train") / "train.py"
OCR_DIR = job_dir("ocr")


def contract_env(tmp: Path, **params: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUBOT_")}
    env.update(
        GPUBOT_JOB_ID="job-1",
        GPUBOT_WORKSPACE=str(tmp / "work"),
        GPUBOT_CHECKPOINT_DIR=str(tmp / "checkpoints"),
        GPUBOT_RESULTS_DIR=str(tmp / "results"),
        GPUBOT_PROGRESS_FILE=str(tmp / "progress.json"),
    )
    (tmp / "work").mkdir(exist_ok=True)
    env.update({f"GPUBOT_PARAM_{k.upper()}": v for k, v in params.items()})
    return env


def run_job(script: Path, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(script)], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def checkpoint_names(tmp: Path) -> list[str]:
    return sorted((p.name for p in (tmp / "checkpoints").iterdir()),
                  key=lambda n: int(n.split("-")[1]))


def test_bundled_jobs() -> None:
    assert job_names() == ["ocr", "train"]
    with pytest.raises(KeyError):
        job_dir("nope")


def test_train_runs_to_completion(tmp_path: Path) -> None:
    env = contract_env(tmp_path, steps="120", checkpoint_every="25", step_seconds="0",
                       lr="0.2", seed="1")
    done = run_job(TRAIN, env, tmp_path / "work")
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "results/metrics.json").read_text())
    assert metrics["steps"] == 120 and metrics["resumed_from"] is None
    assert metrics["accuracy"] > 0.7 and metrics["eval_loss"] < 0.6
    assert (tmp_path / "results/model.npz").stat().st_size > 0
    progress = parse_progress((tmp_path / "progress.json").read_text())
    assert progress is not None and (progress.step, progress.total_steps) == (120, 120)
    assert progress.at is not None and "loss" in progress.metrics
    assert checkpoint_names(tmp_path) == ["checkpoint-75", "checkpoint-100"]  # newest 2 kept
    assert (tmp_path / "checkpoints/checkpoint-100/.complete").exists()
    trainer = latest_trainer_metrics(done.stdout)
    assert trainer is not None and {"loss", "eval_loss", "epoch"} <= set(trainer)


def test_resume_continues_from_the_checkpoint_step(tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    straight.mkdir()
    params = dict(steps="60", checkpoint_every="10", step_seconds="0", seed="3")
    assert run_job(TRAIN, contract_env(straight, **params), straight).returncode == 0

    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    failed = run_job(TRAIN, contract_env(interrupted, fail_at_step="25", **params), interrupted)
    assert failed.returncode == 3 and "simulated failure at step 25" in failed.stderr
    assert not (interrupted / "results/metrics.json").exists()
    files = [str(p.relative_to(interrupted / "checkpoints"))
             for p in (interrupted / "checkpoints").rglob("*") if p.is_file()]
    newest = newest_complete_checkpoint(files, job_exited=True)
    assert newest == "checkpoint-20"

    env = contract_env(interrupted, **params)
    env["GPUBOT_RESUME_FROM"] = str(interrupted / "checkpoints" / newest)
    resumed = run_job(TRAIN, env, interrupted)
    assert resumed.returncode == 0, resumed.stderr
    assert "at step 20" in resumed.stdout
    history = [line for line in resumed.stdout.splitlines() if line.startswith("{'loss'")]
    assert len(history) == 4  # steps 30, 40, 50, 60: it did not restart at 0
    a = json.loads((straight / "results/metrics.json").read_text())
    b = json.loads((interrupted / "results/metrics.json").read_text())
    assert b["steps"] == 60 and b["resumed_from"].endswith("checkpoint-20")
    assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-9)  # same run, resumed


def test_pdfs_are_valid_and_deterministic(tmp_path: Path) -> None:
    from pypdf import PdfReader

    paths = make_pdfs(tmp_path, 3)
    assert paths[2].read_bytes() == pdf_bytes(expected_pages(2))
    reader = PdfReader(str(paths[2]))
    assert len(reader.pages) == 3
    assert "Document 2 page 3" in (reader.pages[2].extract_text() or "")


@pytest.mark.parametrize("with_pypdf", [True, False])
def test_ocr_extracts_every_file(tmp_path: Path, with_pypdf: bool) -> None:
    src = tmp_path / "work" / "input"
    make_pdfs(src, 6)
    (src / "broken.pdf").write_bytes(b"%PDF-1.4 truncated")
    env = contract_env(tmp_path, src="input")
    if not with_pypdf:  # a shadow package that fails to import forces the built-in parser
        shadow = tmp_path / "shadow" / "pypdf"
        shadow.mkdir(parents=True)
        (shadow / "__init__.py").write_text("raise ImportError('hidden for the test')\n")
        env["PYTHONPATH"] = str(tmp_path / "shadow")
    done = run_job(OCR_DIR / "ocr.py", env, tmp_path / "work")
    assert done.returncode == 1  # the broken file is reported, the others extracted
    manifest = [json.loads(line)
                for line in (tmp_path / "results/manifest.jsonl").read_text().splitlines()]
    assert [m["file"] for m in manifest] == ["broken.pdf"] + [f"doc-{i:03d}.pdf"
                                                              for i in range(6)]
    assert manifest[0]["status"] == "error"
    for i, entry in enumerate(manifest[1:]):
        pages = expected_pages(i)
        assert entry["status"] == "ok" and entry["pages"] == len(pages)
        text = (tmp_path / f"results/text/doc-{i:03d}.txt").read_text()
        assert entry["chars"] == len(text)
        for lines in pages:
            for line in lines:
                assert line in text
    progress = parse_progress((tmp_path / "progress.json").read_text())
    assert progress is not None and (progress.step, progress.total_steps) == (7, 7)


def test_ocr_generates_samples_and_fails_without_input(tmp_path: Path) -> None:
    env = contract_env(tmp_path)
    empty = run_job(OCR_DIR / "ocr.py", env, tmp_path / "work")
    assert empty.returncode == 2 and "no PDF files" in empty.stderr
    env["GPUBOT_PARAM_GENERATE"] = "4"
    done = run_job(OCR_DIR / "ocr.py", env, tmp_path / "work")
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "results/manifest.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(x)["status"] == "ok" for x in lines)


def test_ocr_default_samples_folder_and_shards(tmp_path: Path) -> None:
    seen: list[str] = []
    for shard in range(2):
        out = tmp_path / f"shard{shard}"
        out.mkdir()
        env = contract_env(out, src=str(tmp_path / "work" / "samples"), shards="2",
                           shard=str(shard))
        done = run_job(OCR_DIR / "ocr.py", env, tmp_path)
        assert done.returncode == 0, done.stderr
        seen += [json.loads(x)["file"]
                 for x in (out / "results/manifest.jsonl").read_text().splitlines()]
    assert sorted(seen) == [f"doc-{i:03d}.pdf" for i in range(6)]  # each file exactly once
