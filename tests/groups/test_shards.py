"""Sharded OCR end to end: 40 generated PDFs in moto's S3, 4 shards on 4 simulated instances."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

from sqlalchemy import select

from gpubot import groups
from gpubot.commands.grammar import parse_command
from gpubot.commands.types import LaunchCommand
from gpubot.db.engine import session_scope
from gpubot.db.tables import InstanceRow, JobRow
from gpubot.deps import EngineDeps
from gpubot.jobs.ocr.make_pdfs import expected_pages, make_pdfs, pdf_bytes
from gpubot.sim.server import SimServer
from gpubot.storage.s3 import S3Store
from tests.groups.conftest import drive_group
from tests.groups.test_sweep import children


def instances(deps: EngineDeps, job_id: str) -> list[InstanceRow]:
    with session_scope(deps.sessions) as session:
        rows = list(session.scalars(
            select(InstanceRow).where(InstanceRow.job_id == job_id).order_by(InstanceRow.id)
        ))
        for row in rows:
            session.expunge(row)
        return rows


def upload_pdfs(store: S3Store, tmp_path: Path, count: int) -> list[str]:
    src = S3Store(store.bucket, "pdfs/")
    names = []
    for path in make_pdfs(tmp_path / "pdfs", count):
        src.put_bytes(path.name, path.read_bytes())
        names.append(path.name)
    return names


class TestShardedOcr:
    def test_forty_pdfs_on_four_shards_each_file_once_and_an_outbid_shard_resumes_alone(
        self, gengine: EngineDeps, s3_store: S3Store, sim: SimServer, tmp_path: Path
    ) -> None:
        # given 40 PDFs in S3 and room for 4 shards at once
        names = upload_pdfs(s3_store, tmp_path, 40)
        gengine.config = replace(
            gengine.config, engine=replace(gengine.config.engine, max_concurrent_children=4)
        )
        command = parse_command("ocrx src=pdfs step_seconds=0.3", gengine.config)
        assert isinstance(command, LaunchCommand)
        sub = groups.submit_shards(
            gengine, command, shards=4, requester="U1", channel="C1", request_key="k-ocr"
        )
        assert len(sub.job_ids) == 4

        # when one shard's instance is outbid while it runs
        victim: dict[str, str] = {}

        def outbid_one() -> None:
            if victim:
                return
            for job in children(gengine, sub.group_id):
                if job.state == "running":
                    rows = instances(gengine, job.id)
                    sim.control.outbid(rows[-1].provider_id or "")
                    victim["job"] = job.id
                    return

        group = drive_group(gengine, sub.group_id, on_poll=outbid_one, timeout_s=240)

        # then every shard succeeded; only the outbid one needed a second instance
        kids = children(gengine, sub.group_id)
        assert [j.state for j in kids] == ["succeeded"] * 4, [j.reason for j in kids]
        assert victim, "no shard was caught running"
        attempts = {j.id: j.attempts for j in kids}
        assert attempts.pop(victim["job"]) == 2
        assert set(attempts.values()) == {1}
        all_rows = [r for j in kids for r in instances(gengine, j.id)]
        assert len(all_rows) == 5 and all(r.destroyed_at is not None for r in all_rows)
        assert len({r.provider_id for r in all_rows}) == 5
        # each child received only its own files: each file was processed exactly once
        processed: Counter[str] = Counter()
        for job in kids:
            body = s3_store.get_bytes(f"jobs/{job.id}/results/manifest.jsonl").decode()
            entries = [json.loads(line) for line in body.splitlines()]
            mine = set(job.params["_inputs"][0]["files"])
            assert {e["file"] for e in entries} == mine
            processed.update(e["file"] for e in entries)
        assert sorted(processed) == sorted(names) and set(processed.values()) == {1}
        # the merged manifest lists all 40 files, with their shard and pages
        assert group.state == "succeeded"
        merged_key = f"groups/{sub.group_id}/results/manifest.jsonl"
        merged = [json.loads(x) for x in s3_store.get_bytes(merged_key).decode().splitlines()]
        assert [e["file"] for e in merged] == sorted(names)
        assert all(e["status"] == "ok" and e["pages"] >= 1 for e in merged)
        assert {e["shard"] for e in merged} == {1, 2, 3, 4}
        texts = {o.key for o in s3_store.list(f"groups/{sub.group_id}/results/text/")}
        assert len(texts) == 40
        assert group.spec["result"]["failed"] == []

    def test_failed_files_are_listed_and_retried_with_one_command(
        self, gengine: EngineDeps, s3_store: S3Store, tmp_path: Path
    ) -> None:
        # given 6 PDFs, one of which is not a PDF at all
        names = upload_pdfs(s3_store, tmp_path, 6)
        src = S3Store(s3_store.bucket, "pdfs/")
        src.put_bytes(names[2], b"this is not a pdf")
        command = parse_command("ocrx src=pdfs", gengine.config)
        assert isinstance(command, LaunchCommand)
        sub = groups.submit_shards(
            gengine, command, shards=2, requester="U1", channel="C1", request_key="k-retry"
        )
        group = drive_group(gengine, sub.group_id)
        # then the group failed and lists the files of the failed shard
        assert group.state == "failed"
        failed = group.spec["result"]["failed"]
        assert names[2] in failed and len(failed) == 3
        assert group.spec["result"]["ok"] == 3

        # when the source is fixed and the failed files are retried
        src.put_bytes(names[2], pdf_bytes(expected_pages(2)))
        new_job = groups.retry_failed(gengine, sub.group_id, "U1")
        assert new_job is not None
        assert groups.retry_failed(gengine, sub.group_id, "U1") == new_job  # idempotent
        group = drive_group(gengine, sub.group_id)

        # then the merged manifest is complete
        assert group.state == "succeeded", group.spec["result"]
        merged_key = f"groups/{sub.group_id}/results/manifest.jsonl"
        merged = [json.loads(x) for x in s3_store.get_bytes(merged_key).decode().splitlines()]
        assert [e["file"] for e in merged] == sorted(names)
        assert all(e["status"] == "ok" for e in merged)
        retried = {e["file"] for e in merged if e["job_id"] == new_job}
        assert retried == set(failed)
        with session_scope(gengine.sessions) as session:
            job = session.get(JobRow, new_job)
            assert job is not None and job.group_id == sub.group_id
