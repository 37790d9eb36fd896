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
  or ``inet_up_cost`` (from it), in $ per GB of 10⁹ bytes (exact bytes, whatever unit the
  ``inet_*_billed`` row counters are reported in).

Fidelity switches (min_bid drift, lingering destroyed rows, slow and failing pulls, telemetry
gaps, …) live in :class:`gpubot.sim.settings.SimSettings` (``engine.settings``).

Why one module over 500 lines: the lifecycle, billing and clock share one lock and one
settle-at-every-phase-change rule; splitting them would spread that invariant over modules
that must all take the same lock in the same order. Offers live in ``market.py``, queries in
``query.py``, processes and SSH in ``procs.py`` and ``sshd.py``.
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
from gpubot.sim.settings import SimSettings
from gpubot.sim.sshd import InstanceSSHServer

log = logging.getLogger(__name__)

PROVISION_S = SimSettings.provision_s
"""Default sim seconds with ``actual_status`` null after create (``settings.provision_s``)."""
LOADING_S = SimSettings.loading_s
"""Default sim seconds in ``loading`` before ``running`` (``settings.loading_s``)."""
PULL_ERROR_AFTER_S = 5.0
"""A failing pull fails after at most this many sim seconds of ``loading`` (a missing manifest
is known as soon as the registry answers)."""
DRIFT_ANCHOR_STEPS = 256
"""The min_bid walk restarts from a seeded uniform draw every this many steps, so its value at
any step is a function of (seed, offer, step) alone and costs at most this many steps."""
DAY_S = 86400
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
    forced_min_bid: float = 0.0
    pull_error: bool = False
    pull_failing: bool = False
    telemetry_gap_until: float | None = None
    telemetry_gap_kind: str | None = None

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
                 ssh_host: str = "127.0.0.1", settings: SimSettings | None = None) -> None:
        self.home = home
        self.seed = seed
        self.settings = (settings or SimSettings()).validate()
        self._drift_cache: dict[int, tuple[tuple[int, float], int, float]] = {}
        self.search_day = 0
        self.search_count = 0
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
        self._offers_json: str | None = None
        self._destroyed_json: dict[int, tuple[tuple[Any, ...], str]] = {}
        self.sim_dir.mkdir(parents=True, exist_ok=True)
        (self.sim_dir / "instances").mkdir(exist_ok=True)
        self.host_key = self._load_host_key()
        if self.state_path.exists():
            self._load()
        else:
            self._base = time.time()
            self.offers = {o["id"]: o for o in generate_offers(seed, offer_count, now=self._base)}
            self.rented: dict[int, int] = {}
            self.drift_epoch = self._base
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
        """Write the whole state, atomically (every mutating call does, before its reply).

        The offers (generated once) and each destroyed instance (its row no longer changes)
        are encoded once and their text reused; only live instances are encoded each time.
        Re-encoding everything made a simulator that had destroyed ~500 instances spend
        about half its time in this method (bench/month_real.py --jobs 1000, profiled)."""
        with self._lock:
            head = {
                "version": STATE_VERSION,
                "now": self.now(),
                "rented": {str(k): v for k, v in self.rented.items()},
                "account_keys": self.account_keys,
                "next_instance_id": self.next_instance_id,
                "next_key_id": self.next_key_id,
                "drift_epoch": self.drift_epoch,
                "search_day": self.search_day,
                "search_count": self.search_count,
            }
            if self._offers_json is None:
                self._offers_json = json.dumps(list(self.offers.values()))
            instances = ", ".join(self._instance_json(i) for i in self.instances.values())
            text = (f'{json.dumps(head)[:-1]}, "offers": {self._offers_json}, '
                    f'"instances": [{instances}]}}')
            tmp = self.state_path.with_suffix(".json.tmp")
            tmp.write_text(text)
            os.replace(tmp, self.state_path)
            self._dirty = False
            self._last_save = time.monotonic()

    def _instance_json(self, inst: Instance) -> str:
        """``inst`` encoded for the state file; a destroyed one's text is kept and reused
        while the fields that could still move (bytes counted by a closing SSH session)
        are as when it was encoded."""
        if inst.destroyed_at is None:
            return json.dumps(inst.to_json())
        key = (inst.destroyed_at, inst.bytes_down, inst.bytes_up)
        cached = self._destroyed_json.get(inst.id)
        if cached is None or cached[0] != key:
            cached = (key, json.dumps(inst.to_json()))
            self._destroyed_json[inst.id] = cached
        return cached[1]

    def _load(self) -> None:
        data = json.loads(self.state_path.read_text())
        # the clock never runs backwards across a restart
        self._base = max(time.time(), float(data["now"]))
        self.offers = {o["id"]: o for o in data["offers"]}
        self.rented = {int(k): int(v) for k, v in data["rented"].items()}
        self.account_keys = data["account_keys"]
        self.next_instance_id = data["next_instance_id"]
        self.next_key_id = data["next_key_id"]
        self.drift_epoch = float(data.get("drift_epoch", data["now"]))
        self.search_day = int(data.get("search_day", 0))
        self.search_count = int(data.get("search_count", 0))
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
        """Bill up to ``now`` and apply every phase change that fell due, in order; with
        min_bid drift on, an interruptible instance is outbid at the first drift step whose
        min_bid is above its bid."""
        if inst.destroyed_at is not None:
            return
        if self._drift_applies(inst):
            step_s = self.settings.min_bid_drift_step_s
            first = math.floor((inst.billed_until - self.drift_epoch) / step_s) + 1
            last = math.floor((now - self.drift_epoch) / step_s)
            for k in range(first, last + 1):
                at = self.drift_epoch + k * step_s
                self._settle_to(inst, at)
                if not self._drift_applies(inst):
                    break
                if (inst.bid or 0.0) < max(self._market_min_bid(inst.offer, k),
                                           inst.forced_min_bid):
                    self._outbid(inst, raise_min_bid=False)
                    break
        self._settle_to(inst, now)

    def _settle_to(self, inst: Instance, now: float) -> None:
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
            self._begin_pull(inst, at)
        elif inst.actual_status == "loading" and inst.pull_failing:
            inst.pull_failing = inst.pull_error = False
            inst.actual_status = self.settings.pull_error_status
            inst.status_msg = pull_error_msg(inst.image)
            inst.phase_until = None
        elif inst.actual_status == "loading":
            inst.actual_status = "running"
            inst.status_msg = f"success, running {inst.image}/ssh"
            inst.phase_until = None
            self._start_ssh(inst)
        else:
            inst.phase_until = None
        self._dirty = True

    def _begin_pull(self, inst: Instance, at: float) -> None:
        """Enter the image pull: ``loading_s`` long, or a failure after at most
        :data:`PULL_ERROR_AFTER_S` when the image matches ``pull_error_pattern`` or a control
        call asked for one."""
        pattern = self.settings.pull_error_pattern
        inst.pull_failing = inst.pull_error or bool(pattern and re.search(pattern, inst.image))
        loading = self.settings.loading_s
        inst.phase_until = at + (min(loading, PULL_ERROR_AFTER_S) if inst.pull_failing
                                 else loading)

    # -- min_bid drift ---------------------------------------------------------------------

    def _drift_applies(self, inst: Instance) -> bool:
        return (self.settings.min_bid_drift_pct > 0 and inst.is_bid and inst.destroyed_at is None
                and not inst.outbid and inst.actual_status in (None, "loading", "running"))

    def _drift_step(self, now: float) -> int:
        return math.floor((now - self.drift_epoch) / self.settings.min_bid_drift_step_s)

    def _drift_value(self, offer_id: int, step: int) -> float:
        """The walk's relative offset in [-A, +A] (A = amplitude/100) at ``step``: reflecting
        steps of up to ±A/4, restarted from a seeded uniform draw every
        :data:`DRIFT_ANCHOR_STEPS` steps (deterministic for (seed, offer, step))."""
        amp = self.settings.min_bid_drift_pct / 100
        if step <= 0:
            return 0.0
        anchor = step - step % DRIFT_ANCHOR_STEPS
        cached = self._drift_cache.get(offer_id)
        if cached is not None and cached[0][0] == anchor and cached[0][1] == amp \
                and anchor <= cached[1] <= step:
            k, value = cached[1], cached[2]
        elif anchor == 0:
            k, value = 0, 0.0
        else:
            k = anchor
            value = random.Random(f"drift:{self.seed}:{offer_id}:{anchor}").uniform(-amp, amp)
        while k < step:
            k += 1
            value += random.Random(f"drift:{self.seed}:{offer_id}:{k}").uniform(-amp / 4,
                                                                                amp / 4)
            if value > amp:
                value = 2 * amp - value
            elif value < -amp:
                value = -2 * amp - value
        self._drift_cache[offer_id] = ((anchor, amp), k, value)
        return value

    def _market_min_bid(self, offer: dict[str, Any], step: int | None = None) -> float:
        """The machine's current min_bid ($/h): its base, moved by the drift when it is on."""
        base = float(offer["min_bid"])
        if self.settings.min_bid_drift_pct <= 0:
            return base
        if step is None:
            step = self._drift_step(self.now())
        return round(base * (1 + self._drift_value(int(offer["id"]), step)), 4)

    def instance_min_bid(self, inst: Instance) -> float:
        """The min_bid shown on the instance row and used to decide outbids and resumes."""
        if self.settings.min_bid_drift_pct <= 0 or inst.destroyed_at is not None:
            return inst.min_bid
        return max(self._market_min_bid(inst.offer), inst.forced_min_bid)

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
        current = {pid: procs.busy_seconds(pid) for pid in pids}
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
        """Un-rented offers priced for the query (rented offers are not listed); ``min_bid``
        is the machine's current one (drifted when the drift is on)."""
        now = self.now()
        with self._lock:
            drift = self.settings.min_bid_drift_pct > 0
            step = self._drift_step(now)
            return [price_offer(dict(o, min_bid=self._market_min_bid(o, step)) if drift else o,
                                allocated_storage_gb=allocated_storage_gb,
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

    def is_listed(self, inst: Instance) -> bool:
        """Live, or destroyed less than ``destroyed_linger_s`` sim seconds ago."""
        return inst.destroyed_at is None or (
            self.now() < inst.destroyed_at + self.settings.destroyed_linger_s)

    def listed_instances(self) -> list[Instance]:
        """What ``GET /instances`` lists: live instances plus lingering destroyed rows."""
        with self._lock:
            self.sync()
            return [i for i in self.instances.values() if self.is_listed(i)]

    def get_listed(self, instance_id: int) -> Instance | None:
        """``GET /instances/{id}/``: the live or lingering instance, else None."""
        with self._lock:
            self.sync()
            inst = self.instances.get(instance_id)
            return inst if inst is not None and self.is_listed(inst) else None

    def create(self, offer_id: int, body: dict[str, Any]) -> dict[str, Any]:
        """Rent ``offer_id`` (``PUT /asks/<id>/``); returns the reply body.

        A bid below the offer's current ``min_bid`` creates a stopped instance and replies
        ``success: false``, ``error: "insufficient_bid"`` with ``new_contract`` (the server
        chooses the HTTP status, ``settings.low_bid_status``).
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
                min_bid=self._market_min_bid(offer),
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
            if bid is not None and bid < inst.min_bid:
                inst.actual_status = "stopped"
                inst.intended_status = inst.cur_state = inst.next_state = "stopped"
                inst.outbid = True
                inst.status_msg = (f"bid {bid} below min_bid {inst.min_bid}: "
                                   "created stopped")
                reply = {"success": False, "error": "insufficient_bid",
                         "msg": f"Your bid {bid} is below the current minimum bid "
                                f"{inst.min_bid}; the instance was created stopped.",
                         "new_contract": inst.id}
            else:
                inst.phase_until = inst.created_at + self.settings.provision_s
            self._save()
            return reply

    def destroy(self, instance_id: int) -> None:
        """Kill processes, remove files, free the offer, stop billing. Unknown/gone (lingering
        rows included) → 404 no_such_instance.

        The row keeps ``cur_state``/``next_state`` ``"unloaded"`` and ``actual_status``
        ``"exited"`` (null if no container ever existed) while it lingers.
        """
        with self._lock:
            self.sync()
            inst = self.get(instance_id)
            self._halt(inst)
            inst.min_bid = self.instance_min_bid(inst)
            inst.destroyed_at = self.now()
            inst.actual_status = None if inst.actual_status is None else "exited"
            inst.phase_until = None
            inst.cur_state = inst.next_state = "unloaded"
            inst.status_msg = "destroyed"
            self.rented.pop(int(inst.offer["id"]), None)
            shutil.rmtree(self.sim_dir / "instances" / str(inst.id), ignore_errors=True)
            self._save()

    def set_state(self, instance_id: int, state: str) -> None:
        """PUT {"state": "stopped"|"running"} on the instance (vast's stop and start)."""
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
                elif inst.is_bid and inst.outbid and (inst.bid or 0) < self.instance_min_bid(inst):
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
        self._begin_pull(inst, self.now())

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
            if inst.outbid and bid >= self.instance_min_bid(inst):
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
        """Pause an interruptible instance as a higher bid would (stopped, intended running)."""
        with self._lock:
            self.sync()
            inst = self.get(instance_id)
            if not inst.is_bid:
                raise SimError(400, "invalid_args", f"instance {instance_id} is not a bid")
            self._outbid(inst)
            self._save()

    def _outbid(self, inst: Instance, *, raise_min_bid: bool = True) -> None:
        """Pause ``inst``; ``raise_min_bid`` (a forced outbid) lifts its min_bid above the bid,
        a drift outbid leaves it to the drift."""
        if raise_min_bid:
            raised = round(max(self.instance_min_bid(inst), inst.bid or 0.0) * 1.25 + 0.01, 4)
            inst.min_bid = inst.forced_min_bid = raised
        self._halt(inst)
        inst.outbid = True
        inst.actual_status = "stopped"
        inst.intended_status = inst.cur_state = inst.next_state = "stopped"
        inst.phase_until = None
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

    def fail_pull(self, instance_id: int) -> None:
        """The instance's current (or next) image pull fails, once (vast-like daemon error)."""
        with self._lock:
            self.sync()
            inst = self.get(instance_id)
            inst.pull_error = True
            if inst.actual_status == "loading" and not inst.pull_failing:
                inst.pull_failing = True
                inst.phase_until = min(inst.phase_until or self.now(),
                                       self.now() + PULL_ERROR_AFTER_S)
            self._save()

    def set_telemetry_gap(self, instance_id: int, seconds: float, kind: str = "null") -> None:
        """For the next ``seconds`` sim seconds the instance's row reports no GPU sample
        (``kind`` ``null``) or 0 % with 0 memory (``zero``)."""
        if kind not in ("null", "zero") or seconds < 0:
            raise SimError(400, "invalid_args", "kind must be null or zero, seconds >= 0")
        with self._lock:
            inst = self.get(instance_id)
            inst.telemetry_gap_until = self.now() + seconds
            inst.telemetry_gap_kind = kind
            self._save()

    def telemetry_gap(self, inst: Instance) -> str | None:
        """``None`` (a normal sample), ``"null"`` or ``"zero"`` for the row shown now: the
        instance's window, else a seeded draw per ``telemetry_sample_s`` bucket."""
        now = self.now()
        if inst.telemetry_gap_until is not None and now < inst.telemetry_gap_until:
            return inst.telemetry_gap_kind
        s = self.settings
        if s.gpu_util_null_fraction <= 0 and s.gpu_util_zero_fraction <= 0:
            return None
        bucket = math.floor(now / s.telemetry_sample_s)
        draw = random.Random(f"telemetry:{self.seed}:{inst.id}:{bucket}").random()
        if draw < s.gpu_util_null_fraction:
            return "null"
        if draw < s.gpu_util_null_fraction + s.gpu_util_zero_fraction:
            return "zero"
        return None

    def take_search(self) -> float | None:
        """Count one search against the daily quota of the simulated UTC day. Returns None
        when allowed, else the epoch of the next UTC midnight (the quota's reset)."""
        with self._lock:
            day = math.floor(self.now() / DAY_S)
            if day != self.search_day:
                self.search_day, self.search_count = day, 0
            quota = self.settings.search_quota_per_day
            if quota and self.search_count >= quota:
                return float((day + 1) * DAY_S)
            self.search_count += 1
            self._dirty = True
            return None

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


def pull_error_msg(image: str) -> str:
    """The docker daemon's error for an image whose manifest the registry does not have."""
    name = image if ":" in image.rsplit("/", 1)[-1] else f"{image}:latest"
    return (f"Error response from daemon: manifest for {name} not found: "
            "manifest unknown: manifest unknown")


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
