"""The embedded broker (``gpubotfs://``, workers/embedded_broker.py) holds with several processes.

kombu's own ``filesystem://`` transport writes a message file in place; a consumer in another
process could take and read it half-written (``JSONDecodeError`` in the worker, message lost).
These tests run real processes on the real transport: producer processes publishing with the
project's Celery configuration, real ``celery worker`` processes consuming, and a SQLite table
written by the task that counts every delivery by message id.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest
from kombu import Connection
from kombu.transport import resolve_transport

from gpubot.settings import Settings
from tests.workers import broker_stress
from workers import embedded_broker
from workers.celery_app import celery_config


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    Settings(GPUBOT_HOME=str(home)).ensure_home()
    return home


def _run(tmp_path: Path, *, messages: int, workers: int, budget_s: float) -> None:
    """``2`` producers and ``workers`` workers; every id delivered once, no decode error."""
    home = _home(tmp_path)
    store = tmp_path / "store.db"
    broker_stress.init_store(store)
    procs = broker_stress.Processes(
        broker_stress.env_for(home, store, f"stress-{uuid.uuid4().hex[:8]}"), tmp_path
    )
    deadline = time.monotonic() + budget_s
    try:
        for i in range(workers):
            procs.start_worker(f"w{i}")
        half = messages // 2
        procs.start_producer("a", half)
        procs.start_producer("b", messages - half)
        assert procs.wait_producers(deadline) == [0, 0], procs.log_problems()
        counts = broker_stress.wait_for(store, messages, deadline)
        assert counts.distinct == messages, (
            f"lost {messages - counts.distinct} of {messages}; {procs.log_problems()[:5]}"
        )
        pending = [p for p in (home / "broker" / "in").iterdir() if p.name.endswith(".msg")]
        assert pending == []
    finally:
        procs.stop()
    counts = broker_stress.read_counts(store)
    # No worker died, so Celery's at-least-once never had to redeliver: exactly once.
    assert (counts.rows, counts.distinct) == (messages, messages)
    assert procs.log_problems() == []
    assert list((home / "broker" / "bad").iterdir()) == []
    assert list((home / "broker" / "claimed").iterdir()) == []


class TestConfiguration:
    def test_the_default_broker_is_gpubotfs_in_home(self, tmp_path: Path) -> None:
        config = celery_config(Settings(GPUBOT_HOME=str(tmp_path)))
        assert config["broker_url"] == f"{embedded_broker.SCHEME}://"
        assert config["broker_transport_options"]["data_folder_in"].startswith(str(tmp_path))
        assert resolve_transport(embedded_broker.SCHEME) is embedded_broker.Transport

    def test_a_broker_url_setting_wins(self, tmp_path: Path) -> None:
        settings = Settings(GPUBOT_HOME=str(tmp_path), GPUBOT_BROKER_URL="redis://127.0.0.1/1")
        assert celery_config(settings)["broker_url"] == "redis://127.0.0.1/1"


class TestAtomicFiles:
    def test_a_reader_racing_a_writer_never_sees_a_partial_message(self, tmp_path: Path) -> None:
        """Large payloads widen the write window that broke kombu's filesystem transport."""
        home = _home(tmp_path)
        options = celery_config(Settings(GPUBOT_HOME=str(home)))["broker_transport_options"]
        count, payload = 60, "x" * 500_000
        got: list[int] = []
        errors: list[str] = []

        def write() -> None:
            with Connection(f"{embedded_broker.SCHEME}://", transport_options=options) as conn:
                queue = conn.SimpleQueue("race")
                for i in range(count):
                    queue.put({"i": i, "p": payload})

        def read() -> None:
            deadline = time.monotonic() + 90
            with Connection(f"{embedded_broker.SCHEME}://", transport_options=options) as conn:
                queue = conn.SimpleQueue("race")
                while len(got) + len(errors) < count and time.monotonic() < deadline:
                    try:
                        message = queue.get(timeout=0.5)
                    except queue.Empty:
                        continue
                    except Exception as exc:  # noqa: BLE001 - recorded and asserted below
                        errors.append(repr(exc))
                        continue
                    got.append(message.payload["i"])
                    message.ack()

        reader = threading.Thread(target=read)
        writer = threading.Thread(target=write)
        reader.start()
        writer.start()
        writer.join(timeout=90)
        reader.join(timeout=95)
        assert errors == []
        assert sorted(got) == list(range(count))

    def test_an_undecodable_file_is_quarantined_not_raised(self, tmp_path: Path) -> None:
        home = _home(tmp_path)
        options = celery_config(Settings(GPUBOT_HOME=str(home)))["broker_transport_options"]
        with Connection(f"{embedded_broker.SCHEME}://", transport_options=options) as conn:
            queue = conn.SimpleQueue("q")
            (home / "broker" / "in" / "0_junk.q.msg").write_bytes(b'{"half":')
            queue.put({"ok": 1})
            message = queue.get(timeout=5)
            assert message.payload == {"ok": 1}
            message.ack()
        assert [p.name for p in (home / "broker" / "bad").iterdir()] == ["0_junk.q.msg"]


class TestSeveralProcesses:
    def test_1000_messages_2_producers_1_worker(self, tmp_path: Path) -> None:
        _run(tmp_path, messages=1_000, workers=1, budget_s=240)

    @pytest.mark.slow
    @pytest.mark.timeout(1500)
    def test_10000_messages_2_producers_2_workers(self, tmp_path: Path) -> None:
        _run(tmp_path, messages=10_000, workers=2, budget_s=1400)
