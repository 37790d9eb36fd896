"""The simulator's state machine: market, instances, lifecycle, billing, clock, persistence.

Everything here is thread-safe behind one re-entrant lock. The HTTP layer (server.py) only
translates requests into calls on :class:`SimEngine` and its results into vast-shaped JSON.

Clock: ``now() = base + real elapsed × speed + offset``; :meth:`SimEngine.advance` adds to the
offset. Lifecycle and billing use this clock only, so ``advance(10)`` makes a fresh instance
``running`` (3 s provisioning + 5 s loading) and bills 10 s of it.

Billing (exact ``Decimal`` USD, accrued continuously, settled at every phase change):
- compute: the contract price ($/h: the bid for interruptibles, ``dph_base`` for on-demand)
  for every second ``actual_status == "running"``;
- storage: ``storage_cost`` $/GB/month × disk GB / 720 h, from create until destroy, whatever
  the state;
- bandwidth: bytes through the instance's SSH channels × ``inet_down_cost`` (to the instance)
  or ``inet_up_cost`` (from it), in $ per GB of 10⁹ bytes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import paramiko

from gpubot.sim import procs
from gpubot.sim.market import HOURS_PER_MONTH, generate_offers, price_offer
from gpubot.sim.sshd import InstanceSSHServer

log = logging.getLogger(__name__)

PROVISION_S = 3.0
"""Sim seconds with ``actual_status`` null after create."""
LOADING_S = 5.0
"""Sim seconds in ``loading`` before ``running`` (also after a start)."""
INITIAL_CREDIT = Decimal("100.00")
BYTES_PER_GB = Decimal(10**9)
STATE_VERSION = 1
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SimError(Exception):
    """A request the simulator refuses: ``status`` and vast's ``error`` code and ``msg``."""

    def __init__(self, status: int, error: str, msg: str, **extra: Any) -> None:
        super().__init__(msg)
        self.status = status
        self.error = error
        self.msg = msg
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"success": False, "error": self.error, "msg": self.msg, **self.extra}


def _dec(value: Any) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(repr(float(value)))


@dataclass
class Instance:
    """One contract. ``offer`` is the offer row as rented (priced for the instance's disk)."""

    id: int
    offer: dict[str, Any]
    image: str
    disk_gb: float
    label: str | None
    env: dict[str, str]
    onstart: str | None
    runtype: str
    bid: float | None
    created_at: float
    actual_status: str | None = None
    intended_status: str = "running"
    cur_state: str = "running"
    next_state: str = "running"
    status_msg: str | None = None
    phase_until: float | None = None
    min_bid: float = 0.0
    outbid: bool = False
    keys: list[str] = field(default_factory=list)
    compute_usd: Decimal = Decimal(0)
    storage_usd: Decimal = Decimal(0)
    running_seconds: float = 0.0
    billed_until: float = 0.0
    bytes_down: int = 0
    bytes_up: int = 0
    destroyed_at: float | None = None
    gpu_util: float = 0.0
    ssh: InstanceSSHServer | None = None
    cpu_prev: dict[int, float] = field(default_factory=dict)
    cpu_prev_at: float = 0.0

    @property
    def is_bid(self) -> bool:
        return self.bid is not None

    @property
    def compute_rate(self) -> Decimal:
        """$/h while running."""
        return _dec(self.bid if self.bid is not None else self.offer["dph_base"])

    @property
    def storage_rate(self) -> Decimal:
        """$/h, always until destroyed."""
        return _dec(self.offer["storage_cost"]) * _dec(self.disk_gb) / HOURS_PER_MONTH

    @property
    def bandwidth_down_usd(self) -> Decimal:
        return Decimal(self.bytes_down) / BYTES_PER_GB * _dec(self.offer["inet_down_cost"])

    @property
    def bandwidth_up_usd(self) -> Decimal:
        return Decimal(self.bytes_up) / BYTES_PER_GB * _dec(self.offer["inet_up_cost"])

    @property
    def total_usd(self) -> Decimal:
        return (self.compute_usd + self.storage_usd + self.bandwidth_down_usd
                + self.bandwidth_up_usd)

    def to_json(self) -> dict[str, Any]:
        skip = {"ssh", "cpu_prev", "cpu_prev_at"}
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            if name in skip:
                continue
            value = getattr(self, name)
            out[name] = str(value) if isinstance(value, Decimal) else value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Instance:
        data = dict(data)
        for name in ("compute_usd", "storage_usd"):
            data[name] = Decimal(data[name])
        return cls(**data)


class SimEngine:
    """The simulated vast.ai account and market. See the module docstring for the rules."""

    def __init__(self, *, home: Path, seed: int = 0, speed: float = 1.0,
                 outbid_rate_per_hour: float = 0.0, offer_count: int = 300,
                 ssh_host: str = "127.0.0.1") -> None:
        self.home = home
        self.sim_dir = home / "sim"
        self.state_path = self.sim_dir / "state.json"
        self.speed = speed
        self.outbid_rate_per_hour = outbid_rate_per_hour
        self.ssh_host = ssh_host
        self._lock = threading.RLock()
        self._bytes_lock = threading.Lock()
        self._rng = random.Random(seed * 7919 + 1)
        self._mono0 = time.monotonic()
        self._offset = 0.0
        self.instances: dict[int, Instance] = {}
        self.account_keys: list[dict[str, Any]] = []
        self.next_instance_id = 30_000_000 + random.Random(seed).randint(0, 999) * 1000
        self.next_key_id = 1
        self.fail_creates: list[int] = []
        self._dirty = False
        self._last_save = 0.0
        self.sim_dir.mkdir(parents=True, exist_ok=True)
        (self.sim_dir / "instances").mkdir(exist_ok=True)
        self.host_key = self._load_host_key()
        if self.state_path.exists():
            self._load()
        else:
            self._base = time.time()
            self.offers = {o["id"]: o for o in generate_offers(seed, offer_count, now=self._base)}
            self.rented: dict[int, int] = {}
            self._save()

    # -- clock -----------------------------------------------------------------------------

    def now(self) -> float:
        """Simulated epoch seconds."""
        return self._base + (time.monotonic() - self._mono0) * self.speed + self._offset

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds`` (>= 0), settle everything, return ``now()``."""
        if seconds < 0:
            raise SimError(400, "invalid_args", "cannot move the clock backwards")
        with self._lock:
            self._offset += seconds
            self.sync()
            self._save()
            return self.now()

    # -- persistence -----------------------------------------------------------------------

    def _load_host_key(self) -> paramiko.PKey:
        path = self.sim_dir / "ssh_host_rsa_key"
        if path.exists():
            return paramiko.RSAKey.from_private_key_file(str(path))
        key = paramiko.RSAKey.generate(2048)
        key.write_private_key_file(str(path))
        return key

    def _save(self) -> None:
        with self._lock:
            data = {
                "version": STATE_VERSION,
                "now": self.now(),
                "offers": list(self.offers.values()),
                "rented": {str(k): v for k, v in self.rented.items()},
                "instances": [i.to_json() for i in self.instances.values()],
                "account_keys": self.account_keys,
                "next_instance_id": self.next_instance_id,
                "next_key_id": self.next_key_id,
            }
            tmp = self.state_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.state_path)
            self._dirty = False
            self._last_save = time.monotonic()

    def _load(self) -> None:
        data = json.loads(self.state_path.read_text())
        # the clock never runs backwards across a restart
        self._base = max(time.time(), float(data["now"]))
        self.offers = {o["id"]: o for o in data["offers"]}
        self.rented = {int(k): int(v) for k, v in data["rented"].items()}
        self.account_keys = data["account_keys"]
        self.next_instance_id = data["next_instance_id"]
        self.next_key_id = data["next_key_id"]
        for raw in data["instances"]:
            inst = Instance.from_json(raw)
            self.instances[inst.id] = inst
            if inst.destroyed_at is None and inst.actual_status == "running":
                inst.status_msg = "success, running (simulator restarted: processes are gone)"
                self._start_ssh(inst)

    def save_if_dirty(self, max_age_s: float = 2.0) -> None:
        if self._dirty or time.monotonic() - self._last_save > max_age_s:
            self._save()

    # -- lifecycle -------------------------------------------------------------------------

    def root_of(self, instance_id: int) -> Path:
        return self.sim_dir / "instances" / str(instance_id) / "root"

    def _start_ssh(self, inst: Instance) -> None:
        if inst.ssh is not None:
            return
        root = self.root_of(inst.id)
        root.mkdir(parents=True, exist_ok=True)
        procs.write_nvidia_smi(root)
        self._write_gpu_state(inst)

        def on_bytes(down: int, up: int, inst: Instance = inst) -> None:
            with self._bytes_lock:
                inst.bytes_down += down
                inst.bytes_up += up
            self._dirty = True

        inst.ssh = InstanceSSHServer(
            instance_id=inst.id, root=root, host_key=self.host_key,
            authorized_keys=lambda inst=inst: list(inst.keys),
            env={k: v for k, v in inst.env.items() if _ENV_NAME.match(k)},
            on_bytes=on_bytes, host=self.ssh_host)

    def _halt(self, inst: Instance) -> None:
        """Close SSH and kill the instance's processes (files stay)."""
        if inst.ssh is not None:
            inst.ssh.stop()
            inst.ssh = None
        procs.kill_instance_processes(inst.id, self.root_of(inst.id))
        inst.gpu_util = 0.0
        inst.cpu_prev = {}

    def _settle(self, inst: Instance, now: float) -> None:
        """Bill up to ``now`` and apply every phase change that fell due, in order."""
        if inst.destroyed_at is not None:
            return
        while True:
            due = inst.phase_until
            end = now if due is None or due > now else due
            if end > inst.billed_until:
                seconds = _dec(end - inst.billed_until)
                inst.storage_usd += inst.storage_rate * seconds / 3600
                if inst.actual_status == "running":
                    inst.compute_usd += inst.compute_rate * seconds / 3600
                    inst.running_seconds += float(seconds)
                inst.billed_until = end
            if due is not None and due <= now:
                self._next_phase(inst, due)
            else:
                return

    def _next_phase(self, inst: Instance, at: float) -> None:
        if inst.actual_status is None:
            inst.actual_status = "loading"
            inst.status_msg = f"Pulling {inst.image}"
            inst.phase_until = at + LOADING_S
        elif inst.actual_status == "loading":
            inst.actual_status = "running"
            inst.status_msg = f"success, running {inst.image}/ssh"
            inst.phase_until = None
            self._start_ssh(inst)
        else:
            inst.phase_until = None
        self._dirty = True

    def sync(self) -> None:
        """Settle every instance at ``now()`` (called by each request and the ticker)."""
        with self._lock:
            now = self.now()
            for inst in self.instances.values():
                self._settle(inst, now)

    def tick(self, real_dt: float, sample_gpu: bool) -> None:
        """Background step: settle, random outbids, and (if ``sample_gpu``) gpu_util sampling."""
        with self._lock:
            self.sync()
            if self.outbid_rate_per_hour > 0:
                p = 1.0 - math.exp(-self.outbid_rate_per_hour * real_dt * self.speed / 3600)
                for inst in list(self.instances.values()):
                    if (inst.destroyed_at is None and inst.is_bid
                            and inst.actual_status == "running" and self._rng.random() < p):
                        self._outbid(inst)
            running = [i for i in self.instances.values()
                       if i.destroyed_at is None and i.actual_status == "running"]
        if sample_gpu:
            for inst in running:
                self._sample_gpu(inst)
        self.save_if_dirty()

    def _sample_gpu(self, inst: Instance) -> None:
        root = self.root_of(inst.id)
        pids = procs.instance_pids(inst.id, root)
        at = time.monotonic()
        current = {pid: procs.cpu_seconds([pid]) for pid in pids}
        if not pids:
            util = 0.0
        else:
            override = procs.read_util_override(root)
            if override is not None:
                util = override
            elif inst.cpu_prev_at:
                used = sum(max(0.0, c - inst.cpu_prev.get(pid, 0.0))
                           for pid, c in current.items())
                util = min(100.0, 100.0 * used / max(at - inst.cpu_prev_at, 1e-3))
            else:
                util = 0.0
        inst.cpu_prev, inst.cpu_prev_at = current, at
        inst.gpu_util = round(util, 1)
        self._write_gpu_state(inst)

    def _write_gpu_state(self, inst: Instance) -> None:
        procs.write_gpu_state(
            self.root_of(inst.id), util=inst.gpu_util, mem_total_mb=int(inst.offer["gpu_ram"]),
            name=str(inst.offer["gpu_name"]), count=int(inst.offer["num_gpus"]),
            uuid_prefix=f"GPU-{inst.id:08d}-sim0-0000-0000-00000000000")

    # -- market ----------------------------------------------------------------------------

    def priced_offers(self, *, allocated_storage_gb: float,
                      offer_type: str) -> list[dict[str, Any]]:
        """Un-rented offers priced for the query (rented offers are not listed)."""
        now = self.now()
        with self._lock:
            return [price_offer(o, allocated_storage_gb=allocated_storage_gb,
                                offer_type=offer_type, now=now)
                    for oid, o in self.offers.items()
                    if oid not in self.rented and o["disk_space"] >= allocated_storage_gb]

    # -- instance operations ---------------------------------------------------------------

    def get(self, instance_id: int) -> Instance:
        """The live instance, or SimError 404 ``no_such_instance``."""
        inst = self.instances.get(instance_id)
        if inst is None or inst.destroyed_at is not None:
            raise SimError(404, "no_such_instance",
                           f"error 404/3603: no_such_instance Instance {instance_id} not found.")
        return inst

    def live_instances(self) -> list[Instance]:
        with self._lock:
            self.sync()
            return [i for i in self.instances.values() if i.destroyed_at is None]

    def create(self, offer_id: int, body: dict[str, Any]) -> dict[str, Any]:
        """Rent ``offer_id`` (vast_api.md §1.6); returns the reply body.

        A bid below the offer's ``min_bid`` creates a stopped instance and replies
        ``success: false`` with ``new_contract``.
        """
        with self._lock:
            self.sync()
            if self.fail_creates:
                status = self.fail_creates.pop(0)
                self._dirty = True
                if status == 404:
                    raise SimError(404, "no_such_ask", f"error 404/3603: no_such_ask Instance "
                                   f"type by id {offer_id} is not available.", ask_id=offer_id)
                raise SimError(status, "sim_injected_failure",
                               "injected create failure (simulator)", ask_id=offer_id)
            offer = self.offers.get(offer_id)
            if offer is None or offer_id in self.rented:
                raise SimError(404, "no_such_ask", f"error 404/3603: no_such_ask Instance type "
                               f"by id {offer_id} is not available.", ask_id=offer_id)
            price = body.get("price")
            if price is None:
                price = body.get("bid_price")
            bid: float | None = None
            if price is not None:
                try:
                    bid = float(price)
                except (TypeError, ValueError) as e:
                    raise SimError(400, "invalid_price", "price must be a number") from e
                if not 0.001 <= bid <= 128:
                    raise SimError(400, "invalid_price", "Please set a bid price >= 0.001.")
            try:
                disk = float(body.get("disk") or 10)
            except (TypeError, ValueError) as e:
                raise SimError(400, "invalid_args", "disk must be a number") from e
            if disk <= 0 or disk > float(offer["disk_space"]):
                raise SimError(400, "invalid_args",
                               f"disk {disk} GB not available on offer {offer_id}")
            label = body.get("label")
            if label is not None and len(str(label)) > 1024:
                raise SimError(400, "invalid_args", "label longer than 1024 characters")
            inst = Instance(
                id=self.next_instance_id,
                offer=price_offer(offer, allocated_storage_gb=disk,
                                  offer_type="bid" if bid is not None else "on-demand",
                                  now=self.now()),
                image=str(body.get("image") or "pytorch/pytorch"),
                disk_gb=disk,
                label=None if label is None else str(label),
                env=_parse_env(body.get("env")),
                onstart=body.get("onstart"),
                runtype=str(body.get("runtype") or "ssh"),
                bid=bid,
                created_at=self.now(),
                min_bid=float(offer["min_bid"]),
                keys=[k["public_key"] for k in self.account_keys],
            )
            inst.billed_until = inst.created_at
            self.next_instance_id += 1
            self.instances[inst.id] = inst
            self.rented[offer_id] = inst.id
            self.root_of(inst.id).mkdir(parents=True, exist_ok=True)
            procs.write_nvidia_smi(self.root_of(inst.id))
            reply: dict[str, Any] = {"success": True, "new_contract": inst.id,
                                     "instance_api_key": f"sim-instance-{inst.id}"}
            if bid is not None and bid < float(offer["min_bid"]):
                inst.actual_status = "stopped"
                inst.intended_status = inst.cur_state = inst.next_state = "stopped"
                inst.outbid = True
                inst.status_msg = (f"bid {bid} below min_bid {offer['min_bid']}: "
                                   "created stopped")
                reply = {"success": False, "error": "insufficient_bid",
                         "msg": f"Your bid {bid} is below the current minimum bid "
                                f"{offer['min_bid']}; the instance was created stopped.",
                         "new_contract": inst.id}
            else:
                inst.phase_until = inst.created_at + PROVISION_S
            self._save()
            return reply

    def destroy(self, instance_id: int) -> None:
        """Kill processes, remove files, free the offer. Unknown/gone → 404 no_such_instance."""
        with self._lock:
            self.sync()
            inst = self.get(instance_id)
            self._halt(inst)
            inst.destroyed_at = self.now()
            inst.actual_status = None
            inst.cur_state = inst.next_state = "unloaded"
            self.rented.pop(int(inst.offer["id"]), None)
            shutil.rmtree(self.sim_dir / "instances" / str(inst.id), ignore_errors=True)
            self._save()

    def set_state(self, instance_id: int, state: str) -> None:
        """PUT {"state": "stopped"|"running"} (vast_api.md §4.2)."""
        with self._lock:
            self.sync()
            inst = self.get(instance_id)
            if state == "stopped":
                self._halt(inst)
                inst.actual_status = "stopped"
                inst.intended_status = inst.cur_state = inst.next_state = "stopped"
                inst.phase_until = None
                inst.status_msg = "stopped by user"
            elif state == "running":
                inst.intended_status = "running"
                if inst.actual_status in ("running", "loading", None):
                    pass
                elif inst.is_bid and inst.outbid and (inst.bid or 0) < inst.min_bid:
                    inst.status_msg = "Scheduling: bid below min_bid, waiting for the GPU"
                else:
                    self._resume(inst)
            else:
                raise SimError(400, "invalid_args", f"unknown state {state!r}")
            self._save()

    def _resume(self, inst: Instance) -> None:
        inst.outbid = False
        inst.actual_status = "loading"
        inst.intended_status = inst.cur_state = inst.next_state = "running"
        inst.status_msg = f"Starting {inst.image}"
        inst.phase_until = self.now() + LOADING_S

    def set_label(self, instance_id: int, label: str | None) -> None:
        with self._lock:
            inst = self.get(instance_id)
            if label is not None and len(label) > 1024:
                raise SimError(400, "invalid_args", "label longer than 1024 characters")
            inst.label = label
            self._save()

    def change_bid(self, instance_id: int, price: Any) -> None:
        """New bid; a paused (outbid) instance with intended running resumes when it wins."""
        with self._lock:
            self.sync()
            inst = self.get(instance_id)
            try:
                bid = float(price)
            except (TypeError, ValueError) as e:
                raise SimError(400, "invalid_args", "Please set a bid price >= 0.001.") from e
            if not 0.001 <= bid <= 32:
                raise SimError(400, "invalid_args", "Please set a bid price >= 0.001.")
            inst.bid = bid
            if inst.outbid and bid >= inst.min_bid:
                self._resume(inst)
            self._save()

    def attach_key(self, instance_id: int, key: str) -> None:
        with self._lock:
            inst = self.get(instance_id)
            _check_key(key)
            if key.strip() not in inst.keys:
                inst.keys.append(key.strip())
            self._save()

    def add_account_key(self, key: str) -> dict[str, Any]:
        with self._lock:
            _check_key(key)
            row = {"id": self.next_key_id, "user_id": 1, "public_key": key.strip(),
                   "created_at": self.now(), "deleted_at": None}
            self.next_key_id += 1
            self.account_keys.append(row)
            self._save()
            return row

    def delete_account_key(self, key_id: int) -> None:
        with self._lock:
            before = len(self.account_keys)
            self.account_keys = [k for k in self.account_keys if k["id"] != key_id]
            if len(self.account_keys) == before:
                raise SimError(404, "not_found", f"ssh key {key_id} not found")
            self._save()

    # -- faults ----------------------------------------------------------------------------

    def outbid(self, instance_id: int) -> None:
        """Pause an interruptible instance as a higher bid would (vast_api.md §4.3)."""
        with self._lock:
            self.sync()
            inst = self.get(instance_id)
            if not inst.is_bid:
                raise SimError(400, "invalid_args", f"instance {instance_id} is not a bid")
            self._outbid(inst)
            self._save()

    def _outbid(self, inst: Instance) -> None:
        self._halt(inst)
        inst.outbid = True
        inst.actual_status = "stopped"
        inst.intended_status = inst.cur_state = inst.next_state = "stopped"
        inst.phase_until = None
        inst.min_bid = round(max(inst.min_bid, inst.bid or 0.0) * 1.25 + 0.01, 4)
        inst.status_msg = "outbid: paused, a higher bid holds the GPU"
        self._dirty = True

    def set_host_status(self, instance_id: int, status: str) -> None:
        """``offline``/``unknown``/``exited``: SSH goes away, compute billing stops;
        ``running`` brings the instance back (new SSH port)."""
        if status not in ("offline", "unknown", "exited", "running"):
            raise SimError(400, "invalid_args", f"unsupported status {status!r}")
        with self._lock:
            self.sync()
            inst = self.get(instance_id)
            if status == "running":
                inst.actual_status = "running"
                inst.phase_until = None
                inst.status_msg = "success, running (host back)"
                self._start_ssh(inst)
            else:
                if inst.ssh is not None:
                    inst.ssh.stop()
                    inst.ssh = None
                if status == "exited":
                    procs.kill_instance_processes(inst.id, self.root_of(inst.id))
                inst.actual_status = status
                inst.phase_until = None
                inst.status_msg = {"offline": "host offline", "unknown": "no host heartbeat",
                                   "exited": "container exited"}[status]
            self._save()

    def drop_ssh(self, instance_id: int) -> int:
        with self._lock:
            inst = self.get(instance_id)
            return inst.ssh.drop_connections() if inst.ssh else 0

    def processes(self, instance_id: int) -> list[int]:
        inst = self.get(instance_id)
        return procs.instance_pids(inst.id, self.root_of(inst.id))

    # -- money -----------------------------------------------------------------------------

    def billing(self, instance_id: int | None = None) -> dict[str, Any]:
        """Billing totals as decimal strings (destroyed instances included)."""
        with self._lock:
            self.sync()
            if instance_id is not None:
                inst = self.instances.get(instance_id)
                if inst is None:
                    raise SimError(404, "no_such_instance", f"instance {instance_id} unknown")
                return _bill_row(inst)
            rows = {str(i.id): _bill_row(i) for i in self.instances.values()}
            total = sum((i.total_usd for i in self.instances.values()), Decimal(0))
            return {"instances": rows, "total_usd": usd(total),
                    "credit_usd": usd(INITIAL_CREDIT - total)}

    def credit(self) -> Decimal:
        with self._lock:
            self.sync()
            return INITIAL_CREDIT - sum((i.total_usd for i in self.instances.values()),
                                        Decimal(0))

    def close(self) -> None:
        """Stop every SSH server, kill every instance process (files stay), persist."""
        with self._lock:
            self.sync()
            for inst in self.instances.values():
                if inst.destroyed_at is None:
                    self._halt(inst)
            self._save()


REPORT_QUANTUM = Decimal("0.0000000001")
"""Billing totals are reported to 10⁻¹⁰ USD."""


def usd(value: Decimal) -> str:
    """A USD amount as a decimal string to 10 decimal places."""
    return str(value.quantize(REPORT_QUANTUM))


def _bill_row(inst: Instance) -> dict[str, Any]:
    bw = inst.bandwidth_down_usd + inst.bandwidth_up_usd
    return {
        "instance_id": inst.id, "label": inst.label,
        "compute_usd": usd(inst.compute_usd), "storage_usd": usd(inst.storage_usd),
        "bandwidth_usd": usd(bw), "bandwidth_down_usd": usd(inst.bandwidth_down_usd),
        "bandwidth_up_usd": usd(inst.bandwidth_up_usd), "total_usd": usd(inst.total_usd),
        "inet_down_bytes": inst.bytes_down, "inet_up_bytes": inst.bytes_up,
        "running_seconds": inst.running_seconds, "created_at": inst.created_at,
        "destroyed_at": inst.destroyed_at,
    }


def _check_key(key: str) -> None:
    parts = (key or "").split()
    if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-")):
        raise SimError(400, "invalid_args", "not an OpenSSH public key")


def _parse_env(env: Any) -> dict[str, str]:
    """The create body's env: a dict (SDK) or a docker-flag string (openapi)."""
    if env is None:
        return {}
    if isinstance(env, dict):
        return {str(k): str(v) for k, v in env.items()}
    if isinstance(env, str):
        out: dict[str, str] = {}
        tokens = env.split()
        i = 0
        while i < len(tokens):
            if tokens[i] == "-e" and i + 1 < len(tokens) and "=" in tokens[i + 1]:
                k, _, v = tokens[i + 1].partition("=")
                out[k] = v
                i += 2
            elif tokens[i] in ("-p", "-v", "-h", "-n") and i + 1 < len(tokens):
                out[f"{tokens[i]} {tokens[i + 1]}"] = "1"
                i += 2
            else:
                i += 1
        return out
    raise SimError(400, "invalid_args", "env must be an object or a string")
