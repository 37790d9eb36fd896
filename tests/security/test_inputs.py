"""What a user may name as data: only inputs the operator declared in ``[inputs.<name>]``.

A sharded run's ``src=`` used to take any absolute path or ``s3://`` URL, which let any allowed
user ship GPUBOT_HOME (the bot's SSH key, its database) or another bucket's objects to a rented
host. These tests drive the real command handler against the simulator over HTTP (real SSH),
moto's S3 server and the real database, and check that a path, a URL, ``..`` or an unknown
name is refused with a usage message while nothing at all launches, and that declared inputs
(a local folder and an S3 prefix) still run end to end.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gpubot.chat.dispatch import Reply, handle_command
from gpubot.config import load_config_text
from gpubot.db.engine import session_scope
from gpubot.db.tables import AuditEventRow, JobGroupRow, JobRow
from gpubot.deps import EngineDeps
from gpubot.engine import staging
from gpubot.errors import CommandError, StorageError
from gpubot.jobs.ocr.make_pdfs import make_pdfs
from gpubot.sim.server import SimServer
from gpubot.storage.s3 import S3Store
from tests.groups.conftest import GROUP_TEMPLATES, drive_group, groups_config
from tests.scenarios.conftest import TEST_TEMPLATES, make_engine

USER = "UINPUTS01"
CHANNEL_ID = "CINPUTS01"


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
    local_input: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> EngineDeps:
    """The group tests' engine (simulator over HTTP, moto S3, the test database) whose config
    declares ``pdfs`` (s3://<bucket>/pdfs/) and ``localpdfs`` (``local_input``)."""
    local_data = tmp_path / "localdata"
    local_data.mkdir()
    config = groups_config(s3_store.bucket, local_data, local_input)
    return make_engine(tmp_path / "home", sim, s3_store, config, monkeypatch)


def run(deps: EngineDeps, text: str, key: str) -> Reply:
    return handle_command(deps, text, user=USER, channel=CHANNEL_ID, request_key=key)


def assert_nothing_launched(deps: EngineDeps) -> None:
    """No job or group rows, no launch audited, no instance rented, nothing staged."""
    with session_scope(deps.sessions) as session:
        assert session.scalar(select(func.count()).select_from(JobRow)) == 0
        assert session.scalar(select(func.count()).select_from(JobGroupRow)) == 0
        launches = session.scalars(
            select(AuditEventRow.action).where(AuditEventRow.action.like("launch%"))
        ).all()
        assert launches == []
    assert deps.provider.list_instances() == []
    assert list(deps.store.list("jobs/")) == []


def assert_usage(reply: Reply) -> None:
    """A refusal that says what src= takes and lists the declared input names (the reply is
    Slack mrkdwn: ``<`` arrives escaped as ``&lt;``)."""
    assert not reply.ok, reply.text
    text = html.unescape(reply.text)
    assert "not a declared input" in text
    assert "src=<input name>" in text
    assert "`pdfs`" in text and "`localpdfs`" in text


def reload_with(deps: EngineDeps, inputs_toml: str, *, home: Path | None = None) -> None:
    """Swap ``deps.config`` for the group test config with ``inputs_toml`` appended."""
    text = TEST_TEMPLATES + GROUP_TEMPLATES.split("[inputs.pdfs]")[0] + inputs_toml
    text = text.replace("@BUCKET@", "unused-bucket").replace("@LOCAL@", "/nonexistent/local")
    deps.config = load_config_text(text, name="inputs-test.toml", home=home)


class TestUserNamedPlacesAreRefused:
    @pytest.mark.parametrize(
        "value",
        ["<HOME>", "/", "../..", "s3://foreign-bucket/x", "s3://<BOT_BUCKET>/gpubot/jobs/",
         "scans", "/etc/passwd", "PDFS", "pdfs/../.."],
    )
    def test_a_path_url_or_undeclared_name_is_refused_and_nothing_launches(
        self, gengine: EngineDeps, s3_store: S3Store, value: str
    ) -> None:
        # given the bot's home holds its private key and database, and another job's results
        home = gengine.settings.home
        assert gengine.ssh_key_path.is_file()
        if not (home / "gpubot.db").exists():
            (home / "gpubot.db").write_bytes(b"SQLite format 3\x00")
        s3_store.put_bytes("jobs/j-other/results/secret.txt", b"someone else's results")
        src = value.replace("<HOME>", str(home)).replace("<BOT_BUCKET>", s3_store.bucket)

        # when an allowed user names it as the input of a sharded run
        reply = run(gengine, f'ocrx src="{src}" shards=2', f"k-{value}")

        # then it is refused with the usage and nothing at all happened
        assert_usage(reply)
        with session_scope(gengine.sessions) as session:
            assert session.scalar(select(func.count()).select_from(JobRow)) == 0
            assert session.scalar(select(func.count()).select_from(JobGroupRow)) == 0
            assert session.scalars(
                select(AuditEventRow.action).where(AuditEventRow.action.like("launch%"))
            ).all() == []
        assert gengine.provider.list_instances() == []
        assert [o.key for o in s3_store.list("jobs/")] == ["jobs/j-other/results/secret.txt"]

    def test_the_template_default_is_not_a_place_either(self, gengine: EngineDeps) -> None:
        # the ocrx template's own default src ("samples") is not a declared input
        reply = run(gengine, "ocrx shards=2", "k-default")
        assert_usage(reply)
        assert_nothing_launched(gengine)

    def test_a_user_cannot_type_the_internal_staging_list_or_change_template_data(
        self, gengine: EngineDeps
    ) -> None:
        for text in (
            'ocrx src=pdfs shards=2 _inputs="/"',
            "datax src=pdfs",
            "datax data=/",
        ):
            reply = run(gengine, text, f"k-{text}")
            assert not reply.ok, text
        assert_nothing_launched(gengine)


class TestDeclaredInputsAreCheckedAtUse:
    def test_an_input_that_contains_gpubot_home_is_refused_when_used(
        self, gengine: EngineDeps, tmp_path: Path
    ) -> None:
        # given a config validated against another home, whose input contains the real one
        reload_with(
            gengine, f'[inputs.everything]\nsrc = "{tmp_path}"\n',
            home=Path("/nonexistent/other-home"),
        )
        # when it is used
        reply = run(gengine, "ocrx src=everything shards=2", "k-home")
        # then it is refused, naming why, and nothing launched
        assert not reply.ok
        assert "GPUBOT_HOME" in reply.text and "[inputs.everything]" in reply.text
        assert_nothing_launched(gengine)

    def test_an_s3_input_over_the_bots_own_prefix_is_refused_when_used(
        self, gengine: EngineDeps, s3_store: S3Store
    ) -> None:
        reload_with(gengine, f'[inputs.mine]\nsrc = "s3://{s3_store.bucket}/"\n')
        reply = run(gengine, "ocrx src=mine shards=2", "k-own")
        assert not reply.ok
        assert "bot's own storage prefix" in reply.text
        assert_nothing_launched(gengine)

    def test_more_files_than_max_files_is_refused(
        self, gengine: EngineDeps, local_input: Path
    ) -> None:
        make_pdfs(local_input, 5)
        reload_with(gengine, f'[inputs.few]\nsrc = "{local_input}"\nmax_files = 3\n')
        reply = run(gengine, "ocrx src=few shards=2", "k-max")
        assert not reply.ok
        assert "more than its limit of 3 files" in reply.text
        assert_nothing_launched(gengine)

    def test_a_tree_of_empty_folders_stops_the_walk_early(
        self, gengine: EngineDeps, local_input: Path
    ) -> None:
        for i in range(1020):
            (local_input / f"d{i:04d}").mkdir()
        reload_with(gengine, f'[inputs.deep]\nsrc = "{local_input}"\nmax_files = 1\n')
        with pytest.raises(StorageError, match="more than 1010 files and folders"):
            staging.list_source(gengine, gengine.config.inputs["deep"])

    def test_symlinks_inside_a_declared_folder_are_never_listed_nor_read(
        self, gengine: EngineDeps, local_input: Path
    ) -> None:
        home = gengine.settings.home
        make_pdfs(local_input, 2)
        os.symlink(gengine.ssh_key_path, local_input / "key.pdf")
        os.symlink(home, local_input / "home")
        pdfs = sorted(p.name for p in local_input.iterdir() if not p.is_symlink())
        names = [f.name for f in staging.list_source(gengine, gengine.config.inputs["localpdfs"])]
        assert names == pdfs and len(names) == 2
        source = staging._LocalSource(str(local_input))
        with pytest.raises(StorageError, match="symlink"):
            source.list(("key.pdf",))
        with pytest.raises(StorageError, match="symlink"):
            source.list((f"home/{gengine.ssh_key_path.name}",))

    def test_resolve_input_takes_names_only(self, gengine: EngineDeps) -> None:
        assert staging.resolve_input(gengine, "pdfs").name == "pdfs"
        for bad in ("", "/", "a" * 33, "pdfs/", None, 3):
            with pytest.raises(CommandError, match="not a declared input"):
                staging.resolve_input(gengine, bad)


class TestDeclaredInputsRun:
    def test_a_declared_local_folder_runs_end_to_end(
        self, gengine: EngineDeps, s3_store: S3Store, local_input: Path
    ) -> None:
        names = sorted(p.name for p in make_pdfs(local_input, 4))
        reply = run(gengine, "ocrx src=localpdfs shards=2", "k-local")
        assert reply.ok, reply.text
        assert reply.job_id is not None and len(reply.job_ids) == 2
        for job_id in reply.job_ids:
            with session_scope(gengine.sessions) as session:
                job = session.get(JobRow, job_id)
                assert job is not None
                entry = job.params["_inputs"][0]
                assert entry["input"] == "localpdfs" and "src" not in entry
                assert job.params["src"] == "input"
        group = drive_group(gengine, reply.job_id)
        assert group.state == "succeeded", group.spec.get("result")
        assert group.spec["input"] == "localpdfs" and "src" not in group.spec
        merged = s3_store.get_bytes(f"groups/{reply.job_id}/results/manifest.jsonl").decode()
        entries = [json.loads(line) for line in merged.splitlines()]
        assert [e["file"] for e in entries] == names
        assert all(e["status"] == "ok" for e in entries)

    def test_a_declared_s3_prefix_runs_end_to_end(
        self, gengine: EngineDeps, s3_store: S3Store, tmp_path: Path
    ) -> None:
        src = S3Store(s3_store.bucket, "pdfs/")
        names = []
        for path in make_pdfs(tmp_path / "pdfs", 4):
            src.put_bytes(path.name, path.read_bytes())
            names.append(path.name)
        reply = run(gengine, "ocrx src=pdfs shards=2", "k-s3")
        assert reply.ok, reply.text
        assert reply.job_id is not None
        group = drive_group(gengine, reply.job_id)
        assert group.state == "succeeded", group.spec.get("result")
        merged = s3_store.get_bytes(f"groups/{reply.job_id}/results/manifest.jsonl").decode()
        assert [json.loads(line)["file"] for line in merged.splitlines()] == sorted(names)


class TestUsageText:
    def test_help_shows_src_input_name_and_the_declared_inputs(self) -> None:
        from gpubot.commands.usage import help_text, usage

        config = load_config_text(
            '[inputs.scans]\nsrc = "s3://acme-scans/invoices/"\n'
            'description = "Scanned invoices"\n'
        )
        for text in (usage("ocr", config), help_text(config)):
            assert "src=<input name>" in text
            assert "scans (Scanned invoices)" in text
        assert "none declared yet" in usage("ocr", load_config_text(""))
