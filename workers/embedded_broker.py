"""The embedded broker: kombu's filesystem transport with atomic writes, under ``gpubotfs://``.

Why not kombu's own ``filesystem://``: its ``Channel._put`` (kombu 5.7) creates the message
file under its final name and then writes into it; a consumer in another process lists the
folder, moves the file away and reads it — possibly before the write finished — and dies on
``json.JSONDecodeError`` (seen with separate worker, beat and chat processes). Its exchange
tables have the same hole (``open("wb")`` truncates before the lock is taken), and consumed
files are moved to the system temporary folder, a copy-then-delete when that is on another
filesystem, which two consumers can both "win".

This transport keeps kombu's folder layout and file names and changes three things:

* **publish**: the message is written to ``<broker>/tmp/`` and ``os.rename``-d into the queue
  folder, so a reader sees a whole file or no file (rename is atomic within one filesystem,
  which is why ``tmp/`` lives inside the broker folder);
* **consume**: a consumer claims a message with one ``os.rename`` into ``<broker>/claimed/``
  (exactly one process wins; a loser gets ``FileNotFoundError`` and tries the next file),
  reads it and deletes it. The folder listing is cached per channel and re-read only when
  the cached names are used up, so draining a backlog of N files costs O(N), not O(N²);
* **exchange tables** (fanout and routing, in ``control/``) are rewritten whole under an
  exclusive lock file and replaced by rename; readers never see a partial table.

A file that still cannot be decoded (written by something else) is moved to ``<broker>/bad/``
and logged, never raised into the worker's consumer loop.

Limits, same as kombu's filesystem transport: one machine (a local filesystem; not NFS), no
fsync (a power cut can lose recent messages), and a message a worker has taken is in that
worker's memory only: a worker killed mid-task (SIGKILL, OOM) loses it; a warm shutdown puts
unacknowledged messages back. gpubot tolerates that because the reconcile tick re-derives all
work from the database; it is why Redis is the production broker.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import filesystem as kombu_fs
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

logger = logging.getLogger(__name__)

SCHEME = "gpubotfs"
"""The URL scheme (``gpubotfs://``) this module registers with kombu when imported."""

RELIST_MIN_SECONDS = 0.05
"""An empty queue re-reads the folder at most this often per channel (a worker polls several
queues in turn; without this, every poll of an idle queue would list a busy folder)."""


def _subfolder(base: str, name: str) -> str:
    path = os.path.join(os.path.dirname(os.path.abspath(base)), name)
    os.makedirs(path, exist_ok=True)
    return path


class Channel(kombu_fs.Channel):
    """A filesystem channel whose files are only ever seen whole (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listing: dict[str, deque[str]] = {}
        self._listed_at = 0.0
        os.makedirs(self.data_folder_in, exist_ok=True)
        os.makedirs(self.data_folder_out, exist_ok=True)
        self.control_folder.mkdir(parents=True, exist_ok=True)
        # Inside the broker folder: same filesystem as the queue folder, so renames are atomic.
        self._tmp_folder = _subfolder(self.data_folder_out, "tmp")
        self._claimed_folder = _subfolder(self.data_folder_in, "claimed")
        self._bad_folder = _subfolder(self.data_folder_in, "bad")

    # -- files ------------------------------------------------------------------------------

    def _write_atomic(self, final_path: str, data: bytes) -> None:
        """Write ``data`` to a temporary file, then rename it to ``final_path``."""
        tmp_path = os.path.join(self._tmp_folder, f"{uuid.uuid4().hex}.part")
        try:
            with open(tmp_path, "wb", buffering=0) as f:
                f.write(data)
            os.rename(tmp_path, final_path)
        except OSError as exc:
            try:
                os.unlink(tmp_path)
            except OSError:
                pass
            raise ChannelError(f"Cannot add file {final_path!r} to directory") from exc

    # -- messages ---------------------------------------------------------------------------

    def _put(self, queue: str, payload: dict[str, Any], **kwargs: Any) -> None:
        """Publish ``payload`` on ``queue``: whole file or nothing. ``ChannelError`` on I/O."""
        # Same name shape as kombu (``<ms>_<uuid>.<queue>.msg``): sorted names are FIFO.
        name = f"{int(round(time.monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        self._write_atomic(
            os.path.join(self.data_folder_out, name), str_to_bytes(dumps(payload))
        )

    def _relist(self) -> None:
        by_queue: dict[str, deque[str]] = {}
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.endswith(".msg"):
                queue = name.partition(".")[2][: -len(".msg")]
                by_queue.setdefault(queue, deque()).append(name)
        self._listing = by_queue
        self._listed_at = time.monotonic()

    def _get(self, queue: str) -> dict[str, Any]:
        """The oldest message of ``queue``, claimed by this process; ``Empty`` when none."""
        pending = self._listing.get(queue)
        if not pending and time.monotonic() - self._listed_at >= RELIST_MIN_SECONDS:
            self._relist()
            pending = self._listing.get(queue)
        while pending:
            name = pending.popleft()
            claimed = os.path.join(self._claimed_folder, f"{os.getpid()}-{name}")
            try:
                os.rename(os.path.join(self.data_folder_in, name), claimed)
            except FileNotFoundError:
                continue  # another consumer took it
            try:
                with open(claimed, "rb") as f:
                    raw = f.read()
                os.unlink(claimed)
            except OSError as exc:
                raise ChannelError(f"Cannot read file {claimed!r} from queue.") from exc
            try:
                return loads(bytes_to_str(raw))
            except ValueError:
                self._quarantine(name, raw)
        raise kombu_fs.Empty()

    def _quarantine(self, name: str, raw: bytes) -> None:
        path = os.path.join(self._bad_folder, name)
        with open(path, "wb") as f:
            f.write(raw)
        logger.error("embedded broker: undecodable message moved to %s (%d bytes)", path, len(raw))

    def _purge(self, queue: str) -> int:
        self._listing.pop(queue, None)
        return int(super()._purge(queue))

    # -- exchange tables --------------------------------------------------------------------

    def _read_table(self, file: Path) -> list[kombu_fs.exchange_queue_t]:
        try:
            raw = file.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ChannelError(f"Cannot open {file}") from exc
        return [kombu_fs.exchange_queue_t(*q) for q in loads(bytes_to_str(raw))]

    def _update_table(self, exchange: str, add: Any = None, remove: Any = None) -> None:
        """Rewrite ``exchange``'s table under ``<exchange>.lock``, replacing it by rename."""
        file = self._exchange_file(exchange)
        lock_path = file.with_name(file.name + ".lock")
        with open(lock_path, "a+b") as lock_file:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
            try:
                queues = self._read_table(file)
                if add is not None and add not in queues:
                    queues.insert(0, add)
                elif remove is not None and remove in queues:
                    queues.remove(remove)
                else:
                    return
                self._write_atomic(str(file), str_to_bytes(dumps(queues)))
            finally:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)

    def get_table(self, exchange: str) -> list[kombu_fs.exchange_queue_t]:
        """The (routing key, pattern, queue) bindings of ``exchange``; [] when none.

        The file's table, plus the bindings this process has declared itself: kombu keeps
        declared bindings in state shared by every connection of the process and skips the
        file write for a binding it already holds, so a second connection declaring the same
        queue while the first is still writing the file would otherwise route by a table
        without it and drop the message (seen: a writer thread losing its first messages).
        """
        table = self._read_table(self._exchange_file(exchange))
        known = self.state.exchanges.get(exchange, {}).get("table", [])
        for meta in known:
            binding = kombu_fs.exchange_queue_t(*meta)
            if binding not in table:
                table.append(binding)
        return table

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        self._update_table(
            exchange, add=kombu_fs.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        )

    def _delete(
        self, queue: str, exchange: str, routing_key: str, pattern: str, *args: Any, **kwargs: Any
    ) -> None:
        kombu_fs.virtual.Channel._delete(self, queue, exchange, routing_key, pattern)
        try:
            self._update_table(
                exchange,
                remove=kombu_fs.exchange_queue_t(routing_key or "", pattern or "", queue or ""),
            )
        except OSError as exc:  # pragma: no cover - the control folder vanished
            if exc.errno != errno.ENOENT:
                raise


class Transport(kombu_fs.Transport):
    """kombu's filesystem transport with :class:`Channel` (atomic files, rename claims)."""

    Channel = Channel
    global_state = kombu_fs.virtual.BrokerState()
    driver_type = SCHEME
    driver_name = SCHEME


TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:Transport")
