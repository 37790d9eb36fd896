"""Data staging in the deploy step, against the simulator (real SSH) and moto's S3 server."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from sqlalchemy import select

from gpubot.chat.launch import plan_launch, submit
from gpubot.commands.grammar import parse_command
from gpubot.db.engine import session_scope
from gpubot.db.tables import InstanceRow
from gpubot.deps import EngineDeps
from gpubot.storage.s3 import S3Store
from tests.groups.conftest import tick
from tests.scenarios.conftest import drive

FINISHED = {"succeeded", "failed", "cancelled"}
MB = 1024 * 1024


def launch(deps: EngineDeps, text: str, key: str) -> str:
    plan = plan_launch(deps, parse_command(text, deps.config))
    job_id, created = submit(deps, plan, requester="U1", channel="C1", request_key=key)
    assert created
    return job_id


def instances_of(deps: EngineDeps, job_id: str) -> list[InstanceRow]:
    with session_scope(deps.sessions) as session:
        rows = list(session.scalars(select(InstanceRow).where(InstanceRow.job_id == job_id)))
        for row in rows:
            session.expunge(row)
        return rows


def source(s3_store: S3Store, prefix: str) -> S3Store:
    """The data source: the bot's bucket, outside the bot's own prefix."""
    return S3Store(s3_store.bucket, prefix)


class TestDataStaging:
    def test_s3_files_and_a_packed_local_folder_arrive_verified_before_the_job_runs(
        self, gengine: EngineDeps, s3_store: S3Store, local_data: Path
    ) -> None:
        # given two large files in S3 (one without sha256 metadata: the bot computes it)
        big = source(s3_store, "big/")
        blobs = {"a.bin": os.urandom(MB + 100), "b.bin": os.urandom(MB + 200)}
        big.put_bytes("a.bin", blobs["a.bin"])
        s3_store._client.put_object(
            Bucket=s3_store.bucket, Key="big/b.bin", Body=blobs["b.bin"]
        )
        # and 60 small files in a local folder (packed into one archive)
        small = {f"s{i:02d}.txt": f"small file {i}\n".encode() * (i + 1) for i in range(60)}
        for name, body in small.items():
            (local_data / name).write_bytes(body)

        # when the job runs
        job_id = launch(gengine, "datax", "k-data")
        job = drive(gengine, job_id, until=lambda j: j.state in FINISHED,
                    tick=lambda: tick(gengine))

        # then it succeeded and saw exactly the staged bytes
        assert job.state == "succeeded", job.reason
        sums = s3_store.get_bytes(f"jobs/{job_id}/results/sums.txt").decode()
        seen = {line.split()[1]: line.split()[0] for line in sums.splitlines()}
        expected = {f"data/{n}": hashlib.sha256(b).hexdigest() for n, b in blobs.items()}
        expected |= {f"local/stuff/{n}": hashlib.sha256(b).hexdigest() for n, b in small.items()}
        assert seen == expected
        staged = job.progress["staging"]
        assert staged["files"] == 62
        assert staged["bytes"] == sum(map(len, blobs.values())) + sum(map(len, small.values()))
        assert staged["archives"] == 1 and staged["downloads"] == 2
        assert staged["seconds"] >= 0
        # the archive went through the bot's store
        assert any(o.key.endswith(".tar.gz") for o in s3_store.list(f"jobs/{job_id}/staging/"))

    def test_a_file_corrupted_in_transit_fails_staging_and_the_instance_is_destroyed(
        self, gengine: EngineDeps, s3_store: S3Store
    ) -> None:
        # given a source whose listed sha256 disagrees with its bytes
        good, bad = os.urandom(MB + 10), os.urandom(MB + 20)
        source(s3_store, "corrupt/").put_bytes("a.bin", good)
        s3_store._client.put_object(
            Bucket=s3_store.bucket, Key="corrupt/b.bin", Body=bad,
            Metadata={"sha256": hashlib.sha256(b"what the uploader meant").hexdigest()},
        )

        # when the job runs
        job_id = launch(gengine, "corruptx", "k-corrupt")
        job = drive(gengine, job_id, until=lambda j: j.state in FINISHED,
                    tick=lambda: tick(gengine))

        # then the staging step failed it with a message naming the file
        assert job.state == "failed"
        assert "data file corrupted in transit: b.bin: sha256 mismatch" in job.reason
        assert job.exit_code is None  # the job never started
        rows = instances_of(gengine, job_id)
        assert rows and all(r.destroyed_at is not None for r in rows)
        listed = {o.provider_id for o in gengine.provider.list_instances()}
        assert not listed & {r.provider_id for r in rows}
