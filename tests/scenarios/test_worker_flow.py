"""The engine driven by a real Celery worker consuming from the Redis server."""

from __future__ import annotations

from gpubot.deps import EngineDeps
from gpubot.settings import Settings
from gpubot.sim.server import SimServer
from tests.scenarios.conftest import drive
from tests.scenarios.test_job_flow import instances_of, launch
from workers.celery_app import celery_config


class TestCeleryConfig:
    def test_json_only_and_late_acks_only_on_idempotent_tasks(self) -> None:
        config = celery_config(Settings(GPUBOT_BROKER_URL="redis://127.0.0.1:6379/15"))
        assert config["task_serializer"] == "json"
        assert config["accept_content"] == ["json"]
        assert config["task_acks_late"] is False
        from workers.tasks import advance_job_task, reconcile_tick_task

        assert advance_job_task.acks_late is True
        assert not reconcile_tick_task.acks_late
        assert config["beat_schedule"]["reconcile-tick"]["task"] == reconcile_tick_task.name

    def test_embedded_broker_needs_no_server(self, tmp_path) -> None:  # type: ignore[no-untyped-def]
        config = celery_config(Settings(GPUBOT_HOME=str(tmp_path)))
        assert config["broker_url"] == "gpubotfs://"
        assert config["broker_transport_options"]["data_folder_in"].startswith(str(tmp_path))


class TestRealWorker:
    def test_worker_on_redis_runs_a_train_job_to_success(
        self, engine: EngineDeps, sim: SimServer, redis_worker: None
    ) -> None:
        from workers.tasks import reconcile_tick_task

        job_id = launch(engine, "trainx steps=60 step_seconds=0.02", "k-worker")
        job = drive(
            engine,
            job_id,
            until=lambda j: j.state in {"succeeded", "failed", "cancelled"},
            tick=lambda: reconcile_tick_task.delay(),
            timeout_s=120,
        )
        assert job.state == "succeeded", job.reason
        rows = instances_of(engine, job_id)
        assert len(rows) == 1 and rows[0].destroyed_at is not None
