#!/usr/bin/env python3
"""Example training job for gpubot: a 2-layer MLP on a generated 2-class dataset (numpy only).

It follows the job contract (see ../README.md) and is standalone: python3 + numpy, no gpubot.

Parameters (environment, all optional):
    GPUBOT_PARAM_LR                learning rate (default 0.1)
    GPUBOT_PARAM_STEPS             total optimisation steps (default 200)
    GPUBOT_PARAM_BATCH_SIZE        minibatch size (default 64)
    GPUBOT_PARAM_CHECKPOINT_EVERY  checkpoint every N steps (default 50)
    GPUBOT_PARAM_SEED              data/initialisation seed (default 0)
    GPUBOT_PARAM_STEP_SECONDS      sleep per step so runs are observable (default 0.02)
    GPUBOT_PARAM_LOG_EVERY         print a Trainer-style line every N steps (default 10)
    GPUBOT_PARAM_FAIL_AT_STEP      exit with status 3 when reaching this step (tests)

Behaviour:
    * progress JSON (``{"epoch","step","total_steps","metrics","timestamp"}``) is written
      atomically to GPUBOT_PROGRESS_FILE after every step;
    * every CHECKPOINT_EVERY steps a checkpoint is written to a temp dir and renamed to
      ``GPUBOT_CHECKPOINT_DIR/checkpoint-<step>/`` (``model.npz``, ``state.json``, and the
      ``.complete`` marker); the newest 2 are kept;
    * with GPUBOT_RESUME_FROM (a checkpoint dir) training continues from that step; the
      minibatch sequence is a function of (seed, step), so a resumed run ends with the same
      weights as an uninterrupted one;
    * on SIGTERM it checkpoints and exits 143;
    * at the end GPUBOT_RESULTS_DIR gets ``metrics.json`` (eval_loss, accuracy, ...) and
      ``model.npz``; exit status 0.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HIDDEN = 16
N_TRAIN = 2048
N_EVAL = 512
KEEP_CHECKPOINTS = 2


def _param(name: str, default: str) -> str:
    return os.environ.get(f"GPUBOT_PARAM_{name}", default)


def _dir(var: str, default: Path) -> Path:
    path = Path(os.environ.get(var) or default)
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_data(seed: int, n: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved half-moons with noise: not linearly separable, easy for an MLP."""
    rng = np.random.default_rng(seed * 1000 + 17 + offset)
    labels = rng.integers(0, 2, size=n)
    angle = rng.uniform(0, np.pi, size=n)
    x = np.where(labels == 0, np.cos(angle), 1 - np.cos(angle))
    y = np.where(labels == 0, np.sin(angle), 0.5 - np.sin(angle))
    points = np.stack([x, y], axis=1) + rng.normal(0, 0.1, size=(n, 2))
    return points.astype(np.float64), labels.astype(np.int64)


def init_params(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.normal(0, 1.0, size=(2, HIDDEN)),
        "b1": np.zeros(HIDDEN),
        "w2": rng.normal(0, 1.0 / np.sqrt(HIDDEN), size=(HIDDEN, 2)),
        "b2": np.zeros(2),
    }


def forward(p: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h = np.tanh(x @ p["w1"] + p["b1"])
    logits = h @ p["w2"] + p["b2"]
    logits = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    return h, probs


def loss_and_grads(
    p: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray
) -> tuple[float, dict[str, np.ndarray]]:
    h, probs = forward(p, x)
    n = len(y)
    loss = float(-np.log(probs[np.arange(n), y] + 1e-12).mean())
    d_logits = probs.copy()
    d_logits[np.arange(n), y] -= 1
    d_logits /= n
    d_h = d_logits @ p["w2"].T * (1 - h**2)
    return loss, {
        "w2": h.T @ d_logits,
        "b2": d_logits.sum(axis=0),
        "w1": x.T @ d_h,
        "b1": d_h.sum(axis=0),
    }


def evaluate(p: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    _, probs = forward(p, x)
    loss = float(-np.log(probs[np.arange(len(y)), y] + 1e-12).mean())
    accuracy = float((probs.argmax(axis=1) == y).mean())
    return loss, accuracy


def write_json_atomic(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def save_checkpoint(ckpt_dir: Path, step: int, p: dict[str, np.ndarray], loss: float) -> Path:
    """Write checkpoint-<step>/ via a temp dir + rename; keep the newest KEEP_CHECKPOINTS."""
    final = ckpt_dir / f"checkpoint-{step}"
    tmp = ckpt_dir / f".tmp-checkpoint-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.savez(tmp / "model.npz", **p)
    (tmp / "state.json").write_text(json.dumps({"step": step, "loss": loss}))
    (tmp / ".complete").write_text("")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    existing = sorted(
        (int(d.name.split("-", 1)[1]), d)
        for d in ckpt_dir.iterdir()
        if d.is_dir() and d.name.startswith("checkpoint-") and d.name.split("-", 1)[1].isdigit()
    )
    for _, old in existing[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> tuple[int, dict[str, np.ndarray]]:
    state = json.loads((path / "state.json").read_text())
    with np.load(path / "model.npz") as data:
        params = {k: data[k].copy() for k in data.files}
    return int(state["step"]), params


def main() -> int:
    lr = float(_param("LR", "0.1"))
    total_steps = int(_param("STEPS", "200"))
    batch_size = int(_param("BATCH_SIZE", "64"))
    checkpoint_every = max(1, int(_param("CHECKPOINT_EVERY", "50")))
    seed = int(_param("SEED", "0"))
    step_seconds = float(_param("STEP_SECONDS", "0.02"))
    log_every = max(1, int(_param("LOG_EVERY", "10")))
    fail_at = _param("FAIL_AT_STEP", "")
    fail_at_step = int(fail_at) if fail_at else None

    cwd = Path.cwd()
    ckpt_dir = _dir("GPUBOT_CHECKPOINT_DIR", cwd / "checkpoints")
    results_dir = _dir("GPUBOT_RESULTS_DIR", cwd / "results")
    progress_file = Path(os.environ.get("GPUBOT_PROGRESS_FILE") or cwd / "progress.json")
    progress_file.parent.mkdir(parents=True, exist_ok=True)

    x_train, y_train = make_data(seed, N_TRAIN)
    x_eval, y_eval = make_data(seed, N_EVAL, offset=1)

    step = 0
    params = init_params(seed)
    resume = os.environ.get("GPUBOT_RESUME_FROM")
    if resume:
        step, params = load_checkpoint(Path(resume))
        print(f"resuming from {resume} at step {step}", flush=True)

    stop = {"requested": False}

    def on_term(signum: int, frame: object) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGTERM, on_term)

    started = time.monotonic()
    loss = float("nan")
    while step < total_steps:
        rng = np.random.default_rng([seed, step])
        idx = rng.integers(0, N_TRAIN, size=batch_size)
        loss, grads = loss_and_grads(params, x_train[idx], y_train[idx])
        for k in params:
            params[k] -= lr * grads[k]
        step += 1
        epoch = step * batch_size / N_TRAIN
        write_json_atomic(
            progress_file,
            {
                "epoch": round(epoch, 4),
                "step": step,
                "total_steps": total_steps,
                "metrics": {"loss": loss, "learning_rate": lr},
                "timestamp": datetime.now(timezone.utc).isoformat(),  # noqa: UP017
            },
        )
        if step % log_every == 0 or step == total_steps:
            print({"loss": round(loss, 4), "learning_rate": lr, "epoch": round(epoch, 4)},
                  flush=True)
        if step % checkpoint_every == 0:
            save_checkpoint(ckpt_dir, step, params, loss)
        if fail_at_step is not None and step >= fail_at_step:
            print(f"simulated failure at step {step}", file=sys.stderr, flush=True)
            return 3
        if stop["requested"]:
            save_checkpoint(ckpt_dir, step, params, loss)
            print(f"SIGTERM: checkpointed at step {step}, exiting", flush=True)
            return 143
        if step_seconds > 0:
            time.sleep(step_seconds)

    eval_loss, accuracy = evaluate(params, x_eval, y_eval)
    runtime = time.monotonic() - started
    print({"eval_loss": round(eval_loss, 4), "eval_accuracy": round(accuracy, 4),
           "epoch": round(step * batch_size / N_TRAIN, 4)}, flush=True)
    print({"train_runtime": round(runtime, 3), "train_loss": round(loss, 4)}, flush=True)
    np.savez(results_dir / "model.npz", **params)
    write_json_atomic(
        results_dir / "metrics.json",
        {
            "eval_loss": eval_loss,
            "accuracy": accuracy,
            "final_train_loss": loss,
            "steps": step,
            "resumed_from": resume or None,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
