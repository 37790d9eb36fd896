"""Fixtures for group tests: the scenario fixtures (simulator over HTTP with real SSH, moto's
S3 server) with extra templates: a test OCR template (shardable, with a per-file delay) and
templates that stage data from S3 and from a local folder, and the operator-declared inputs
a sharded run may name (``src=pdfs``: S3; ``src=localpdfs``: a local folder)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gpubot.config import BotConfig, load_config_text
from gpubot.db.engine import session_scope
from gpubot.db.tables import JobGroupRow
from gpubot.deps import EngineDeps
from gpubot.engine.steps import advance_job
from gpubot.engine.tick import reconcile_tick
from gpubot.groups.advance import advance_groups
from gpubot.sim.server import SimServer
from gpubot.storage.s3 import S3Store
from tests.scenarios.conftest import TEST_TEMPLATES, make_engine, sim

__all__ = ["sim"]

GROUP_TEMPLATES = """
[templates.ocrx]
description = "The example OCR job with a per-file delay."
image = "pytorch/pytorch:2.6.0-cuda12.4-cudnn9-devel"
disk_gb = 20
workdir = "builtin:ocr"
run = "python3 ocr.py"
shardable = true

[templates.ocrx.params.src]
type = "str"
default = "samples"

[templates.ocrx.params.shards]
type = "int"
default = 1
min = 1
max = 64

[templates.ocrx.params.step_seconds]
type = "float"
default = 0.0
min = 0
max = 5

[templates.ocrx.resources]
gpu_names = ["RTX 4090", "RTX 3090"]
min_gpu_ram_gb = 16
min_reliability = 0.9
interruptible = "yes"
expected_hours = 0.25

[templates.datax]
description = "Lists and checksums its staged data."
image = "pytorch/pytorch:2.6.0-cuda12.4-cudnn9-devel"
disk_gb = 20
workdir = "builtin:train"
run = "sha256sum data/* local/stuff/* > {GPUBOT_RESULTS_DIR}/sums.txt"

[templates.datax.data]
inputs = [
  {src = "s3://@BUCKET@/big/", dest = "data"},
  {src = "@LOCAL@", dest = "local/stuff"},
]

[templates.datax.resources]
interruptible = "no"
min_reliability = 0.9

[templates.corruptx]
description = "Stages data that was corrupted at the source."
image = "pytorch/pytorch:2.6.0-cuda12.4-cudnn9-devel"
disk_gb = 20
workdir = "builtin:train"
run = "ls data"

[templates.corruptx.data]
inputs = [{src = "s3://@BUCKET@/corrupt/", dest = "data"}]

[templates.corruptx.resources]
interruptible = "no"
min_reliability = 0.9

[inputs.pdfs]
src = "s3://@BUCKET@/pdfs/"
description = "test PDFs in S3"
max_files = 100

[inputs.localpdfs]
src = "@LOCALIN@"
description = "test PDFs in a local folder"
max_files = 100
"""


def groups_config(bucket: str, local_dir: Path, local_input: Path | None = None) -> BotConfig:
    """The scenario templates plus the group templates; at most 2 children at once.

    ``local_input`` is the folder of the declared input ``localpdfs`` (default: a sibling
    ``localinput`` of ``local_dir``)."""
    text = TEST_TEMPLATES.replace("[engine]\n", "[engine]\nmax_concurrent_children = 2\n")
    local_input = local_input or local_dir.parent / "localinput"
    text += (
        GROUP_TEMPLATES.replace("@BUCKET@", bucket)
        .replace("@LOCALIN@", str(local_input))
        .replace("@LOCAL@", str(local_dir))
    )
    return load_config_text(text, name="groups-test.toml")


@pytest.fixture
def local_data(tmp_path: Path) -> Path:
    path = tmp_path / "localdata"
    path.mkdir()
    return path


@pytest.fixture
def local_input(tmp_path: Path) -> Path:
    """The folder of the declared input ``localpdfs``."""
    path = tmp_path / "localinput"
    path.mkdir()
    return path


@pytest.fixture
def gengine(
    tmp_path: Path,
    sim: SimServer,
    s3_store: S3Store,
    local_data: Path,
    local_input: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> EngineDeps:
    return make_engine(
        tmp_path / "home",
        sim,
        s3_store,
        groups_config(s3_store.bucket, local_data, local_input),
        monkeypatch,
    )


def tick(deps: EngineDeps) -> None:
    """One reconcile tick with inline job steps, then one pass over the groups."""
    reconcile_tick(deps, dispatch=lambda job_id, token: advance_job(deps, job_id, token))
    advance_groups(deps, now=deps.clock())


def group_row(deps: EngineDeps, group_id: str) -> JobGroupRow:
    with session_scope(deps.sessions) as session:
        group = session.get(JobGroupRow, group_id)
        assert group is not None
        session.expunge(group)
        return group


def drive_group(
    deps: EngineDeps,
    group_id: str,
    *,
    until: Callable[[JobGroupRow], bool] = lambda g: g.state != "running",
    timeout_s: float = 150.0,
    on_poll: Callable[[], None] | None = None,
) -> JobGroupRow:
    """Tick until ``until(group)`` holds; fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        tick(deps)
        if on_poll is not None:
            on_poll()
        group = group_row(deps, group_id)
        if until(group):
            return group
        if time.monotonic() > deadline:
            raise AssertionError(f"group {group_id} stuck in {group.state}")
        time.sleep(0.05)  # pacing between ticks, bounded by the deadline
