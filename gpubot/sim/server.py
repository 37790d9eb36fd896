"""``gpubot sim``: the vast.ai-compatible HTTP server around :class:`~gpubot.sim.engine.SimEngine`.

Serves ``/api/v0`` and ``/api/v1`` (with and without trailing slashes) so that the official
``vastai`` 1.9.1 SDK and CLI work unmodified, plus admin endpoints under
``/_sim/`` (same bearer key) wrapped by :class:`gpubot.sim.control.SimControl`.

Every JSON reply has ``Content-Type: application/json`` exactly (the CLI insists).

Fidelity switches (:class:`gpubot.sim.settings.SimSettings`, ``engine.settings``) decide the
per-endpoint minimum call intervals (429 without ``Retry-After``), the daily search quota
(429 ``search_quota_exceeded`` with ``X-RateLimit-Reset``), the status of the low-bid reply,
the unit of the bandwidth counters and the telemetry gaps of the rows.

Why one module over 500 lines: it is the route table of the vast.ai API the SDK and CLI call
(v0 and v1, with and without trailing slashes), the JSON shapes of its replies and the
``/_sim/`` admin routes, which must stay in one place to be checked against each other;
the state machine is :mod:`gpubot.sim.engine`, the query language :mod:`gpubot.sim.query`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from gpubot.sim import query as q
from gpubot.sim.control import SimControl
from gpubot.sim.engine import Instance, SimEngine, SimError
from gpubot.sim.market import CATALOGUE
from gpubot.sim.settings import (
    ENV_PREFIX,
    FIELD_TYPES,
    PROFILES,
    SimSettings,
    from_env,
    profile,
)

log = logging.getLogger(__name__)

DEFAULT_API_KEY = "sim-local-key"
DEFAULT_SEARCH_LIMIT = 64
_ID = r"(\d+)"


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    resp = Response(json.dumps(body), status=status, headers=headers or {})
    resp.headers["Content-Type"] = "application/json"
    return resp


@dataclass
class Injection:
    """A fault served instead of the real reply for the next ``count`` matching requests."""

    method: str
    path_regex: str
    status: int
    count: int
    retry_after: float | None
    json_body: bool

    def response(self) -> Response:
        msg = "API requests too frequent endpoint threshold=1.0" if self.status == 429 \
            else f"simulated server error {self.status}"
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(int(self.retry_after) if float(self.retry_after)
                                         .is_integer() else self.retry_after)
        if self.json_body:
            error = "rate_limit_exceeded" if self.status == 429 else "server_error"
            return _json({"success": False, "error": error, "msg": msg}, self.status, headers)
        resp = Response(msg, status=self.status, headers=headers)
        resp.headers["Content-Type"] = "text/plain"
        return resp


_RATE_LIMIT_SHAPES = ("text", "detail", "json")


def rate_limited(threshold_s: float, shape: str) -> Response:
    """A 429 as vast answers a call that came too soon: no ``Retry-After``; the body is plain
    text, ``{"detail": ...}`` or ``{"success": false, "error": "rate_limit_exceeded", ...}``."""
    msg = f"API requests too frequent endpoint threshold={threshold_s:g}"
    if shape == "detail":
        return _json({"detail": msg}, 429)
    if shape == "json":
        return _json({"success": False, "error": "rate_limit_exceeded", "msg": msg}, 429)
    resp = Response(msg, status=429)
    resp.headers["Content-Type"] = "text/plain"
    return resp


def _billed_counter(n_bytes: int, unit: str) -> float | int:
    """``inet_*_billed`` as reported: whole kilobytes of 1000 bytes (``kb``) or bytes."""
    return float(n_bytes // 1000) if unit == "kb" else n_bytes


class _QuietHandler(WSGIRequestHandler):
    """No access log lines (they would drown test output)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None


def instance_row(inst: Instance, engine: SimEngine) -> dict[str, Any]:
    """The vast-shaped instance row; always has start_date and extra_env."""
    o = inst.offer
    running = inst.actual_status == "running" and inst.ssh is not None
    port = inst.ssh.port if running and inst.ssh else None
    compute = float(inst.compute_rate)
    storage = float(inst.storage_rate)
    with engine._bytes_lock:
        down, up = inst.bytes_down, inst.bytes_up
    unit = engine.settings.bandwidth_unit
    gpu_util: float | None = inst.gpu_util if running else 0.0
    gpu_temp: float | None = round(35 + inst.gpu_util / 2, 1) if running else None
    mem_usage: float | None = None
    gap = engine.telemetry_gap(inst) if running else None
    if gap == "null":
        gpu_util = gpu_temp = None
    elif gap == "zero":
        gpu_util, gpu_temp, mem_usage = 0.0, 0.0, 0.0
    row: dict[str, Any] = {
        "id": inst.id, "machine_id": o["machine_id"], "host_id": o["host_id"],
        "bundle_id": o["bundle_id"], "ask_contract_id": o["id"],
        "actual_status": inst.actual_status, "intended_status": inst.intended_status,
        "cur_state": inst.cur_state, "next_state": inst.next_state,
        "status_msg": inst.status_msg, "label": inst.label,
        "image_uuid": inst.image, "image_args": [], "image_runtype": inst.runtype,
        "template_id": None, "template_hash_id": None, "template_name": None,
        "onstart": inst.onstart, "extra_env": [[k, v] for k, v in inst.env.items()],
        "jupyter_token": None,
        "ssh_host": engine.ssh_host if port else None, "ssh_port": port, "ssh_idx": None,
        "machine_dir_ssh_port": port, "public_ipaddr": engine.ssh_host,
        "local_ipaddrs": engine.ssh_host,
        "ports": {"22/tcp": [{"HostIp": engine.ssh_host, "HostPort": str(port)}]}
        if port else None,
        "direct_port_start": -1, "direct_port_end": -1, "direct_port_count": -1,
        "start_date": inst.created_at, "end_date": o["end_date"],
        "duration": engine.now() - inst.created_at,
        "uptime_mins": inst.running_seconds / 60 if running else None,
        "num_gpus": o["num_gpus"], "gpu_name": o["gpu_name"], "gpu_arch": o["gpu_arch"],
        "gpu_ram": o["gpu_ram"], "gpu_totalram": o["gpu_total_ram"], "gpu_frac": 1.0,
        "gpu_lanes": o.get("gpu_lanes"), "gpu_mem_bw": o.get("gpu_mem_bw"), "bw_nvlink": 0.0,
        "gpu_util": gpu_util, "gpu_temp": gpu_temp,
        "cpu_name": o["cpu_name"], "cpu_arch": o["cpu_arch"], "cpu_cores": o["cpu_cores"],
        "cpu_cores_effective": o["cpu_cores_effective"], "cpu_util": 0.0,
        "cpu_ram": o["cpu_ram"], "mem_usage": mem_usage, "mem_limit": None,
        "vmem_usage": mem_usage,
        "disk_space": inst.disk_gb, "disk_usage": -1, "disk_util": -1,
        "disk_name": o.get("disk_name"), "disk_bw": o.get("disk_bw"),
        "inet_up": o["inet_up"], "inet_down": o["inet_down"],
        "inet_up_cost": o["inet_up_cost"], "inet_down_cost": o["inet_down_cost"],
        "inet_up_billed": _billed_counter(up, unit),
        "inet_down_billed": _billed_counter(down, unit),
        "dph_base": compute, "dph_total": round(compute + storage, 6),
        "storage_cost": o["storage_cost"], "storage_total_cost": round(storage, 6),
        "vram_costperhour": o.get("vram_costperhour"),
        "search": o.get("search"), "instance": o.get("instance"),
        "is_bid": inst.is_bid, "min_bid": engine.instance_min_bid(inst),
        "credit_balance": None, "credit_discount": None, "credit_discount_max": 0.4,
        "reliability2": o["reliability"], "verification": o["verification"],
        "geolocation": o["geolocation"], "country_code": o["geolocation"][-2:],
        "static_ip": o["static_ip"], "rentable": True, "external": False,
        "hosting_type": o["hosting_type"], "os_version": o["os_version"],
        "mobo_name": o["mobo_name"], "pci_gen": o["pci_gen"], "pcie_bw": o["pcie_bw"],
        "driver_version": o["driver_version"], "cuda_max_good": o["cuda_max_good"],
        "compute_cap": o["compute_cap"], "dlperf": o["dlperf"],
        "dlperf_per_dphtotal": round(o["dlperf"] / (compute + storage), 3),
        "total_flops": o["total_flops"], "score": o.get("score"),
        "time_remaining": "", "time_remaining_isbid": "", "volume_info": [],
        "logo": o.get("logo"), "webpage": None,
    }
    return row


class SimApp:
    """The WSGI application: routing, auth, fault injection, rate limits, search quota.

    Rate limits are per endpoint name and identity (bearer key + client address), measured in
    REAL seconds (clients pace in real time) from the last call that was let through. Every
    call to a limited or unlimited endpoint is counted (``calls``); one that came sooner than
    its endpoint's interval counts as a violation and, when enforced, is answered 429.
    """

    def __init__(self, engine: SimEngine, api_key: str) -> None:
        self.engine = engine
        self.api_key = api_key
        self.injections: list[Injection] = []
        self._inj_lock = threading.Lock()
        self._rl_lock = threading.Lock()
        self._last_call: dict[tuple[str, str], float] = {}
        self.calls: dict[str, int] = {}
        self.violations: dict[str, int] = {}
        self.rejected: dict[str, int] = {}
        self.quota_rejected = 0
        self._shape_index = 0
        n = _ID
        self.routes: list[tuple[str, re.Pattern[str], Callable[..., Response]]] = [
            (m, re.compile(f"^{p}$"), h) for m, p, h in [
                ("POST", "/bundles", self.search), ("PUT", "/search/asks", self.search_new),
                ("PUT", f"/asks/{n}", self.create),
                ("GET", "/instances", self.list_instances),
                ("GET", "/instances/filters", self.instance_filters),
                ("GET", f"/instances/{n}", self.show_instance),
                ("DELETE", f"/instances/{n}", self.destroy),
                ("PUT", f"/instances/{n}", self.manage),
                ("PUT", f"/instances/bid_price/{n}", self.change_bid),
                ("PUT", f"/instances/reboot/{n}", self.reboot),
                ("PUT", f"/instances/recycle/{n}", self.reboot),
                ("POST", f"/instances/{n}/ssh", self.attach_ssh),
                ("DELETE", f"/instances/{n}/ssh/{n}", self.detach_ssh),
                ("GET", "/ssh", self.list_keys), ("POST", "/ssh", self.add_key),
                ("DELETE", f"/ssh/{n}", self.delete_key),
                ("GET", "/users/current", self.user), ("GET", "/charges", self.charges),
                ("POST", f"/_sim/instances/{n}/outbid", self.sim_outbid),
                ("POST", f"/_sim/instances/{n}/status", self.sim_status),
                ("POST", f"/_sim/instances/{n}/drop_ssh", self.sim_drop_ssh),
                ("GET", f"/_sim/instances/{n}/processes", self.sim_processes),
                ("POST", "/_sim/instances", self.sim_create),
                ("POST", "/_sim/fail_next_creates", self.sim_fail_creates),
                ("POST", "/_sim/inject", self.sim_inject),
                ("POST", "/_sim/advance", self.sim_advance),
                ("GET", "/_sim/billing", self.sim_billing),
                ("GET", f"/_sim/billing/{n}", self.sim_billing_one),
                ("GET", "/_sim/state", self.sim_state),
                ("GET", "/_sim/settings", self.sim_settings),
                ("POST", "/_sim/settings", self.sim_configure),
                ("GET", "/_sim/rate_limits", self.sim_rate_limits),
                ("POST", "/_sim/rate_limits/reset", self.sim_rate_limits_reset),
                ("POST", f"/_sim/instances/{n}/pull_error", self.sim_pull_error),
                ("POST", f"/_sim/instances/{n}/telemetry_gap", self.sim_telemetry_gap),
            ]
        ]
        self.endpoint_of: dict[Callable[..., Response], str] = {
            self.search: "search", self.search_new: "search", self.create: "create",
            self.list_instances: "list", self.instance_filters: "list",
            self.show_instance: "show", self.destroy: "destroy", self.manage: "manage",
            self.change_bid: "change_bid", self.reboot: "reboot",
            self.attach_ssh: "ssh", self.detach_ssh: "ssh", self.list_keys: "ssh",
            self.add_key: "ssh", self.delete_key: "ssh",
            self.charges: "charges", self.user: "user",
        }

    # -- plumbing --------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        try:
            response = self.dispatch(request)
        except SimError as e:
            response = _json(e.body(), e.status)
        except q.QueryError as e:
            response = _json({"success": False, "error": "invalid_args",
                              "msg": f"Error in query parameters: {e}"}, 400)
        except Exception:
            log.exception("simulator error on %s %s", request.method, request.path)
            response = _json({"success": False, "error": "server_error",
                              "msg": "internal simulator error"}, 500)
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        full_path = request.path
        if not full_path.startswith("/_sim/"):
            injected = self._take_injection(request.method, full_path)
            if injected is not None:
                return injected
        match = re.match(r"^/api/v(\d+)(/.*)$", full_path)
        version, path = (int(match.group(1)), match.group(2)) if match else (0, full_path)
        path = path.rstrip("/") or "/"
        if request.method == "GET" and path == "/gpu_names/unique":
            return _json({"gpu_names": sorted({g.name for g in CATALOGUE})})
        auth = request.headers.get("Authorization", "")
        if not auth:
            return _json({"success": False, "error": "auth_error",
                          "msg": "This action requires login."}, 403)
        if auth != f"Bearer {self.api_key}":
            return _json({"success": False, "error": "auth_error", "msg": "Invalid user key"},
                         401)
        for method, pattern, handler in self.routes:
            m = pattern.match(path)
            if m and method == request.method:
                args = [int(g) for g in m.groups()]
                endpoint = self.endpoint_of.get(handler)
                if endpoint is not None:
                    refused = self._admit(endpoint, f"{auth}|{request.remote_addr}")
                    if refused is not None:
                        return refused
                if handler == self.list_instances:
                    return handler(request, version)
                return handler(request, *args)
        return _json({"success": False, "error": "not_found",
                      "msg": f"no such endpoint: {request.method} {full_path}"}, 404)

    def _admit(self, endpoint: str, identity: str) -> Response | None:
        """Count the call; a 429 if it broke the endpoint's interval (enforced) or the
        daily search quota; else None (go on)."""
        settings = self.engine.settings
        interval = settings.rate_limits_real_s.get(endpoint, 0.0)
        now = time.monotonic()
        with self._rl_lock:
            self.calls[endpoint] = self.calls.get(endpoint, 0) + 1
            last = self._last_call.get((endpoint, identity))
            if interval > 0 and last is not None and now - last < interval:
                self.violations[endpoint] = self.violations.get(endpoint, 0) + 1
                if settings.rate_limit_enforce:
                    self.rejected[endpoint] = self.rejected.get(endpoint, 0) + 1
                    shape = _RATE_LIMIT_SHAPES[self._shape_index % len(_RATE_LIMIT_SHAPES)]
                    self._shape_index += 1
                    return rate_limited(interval, shape)
            self._last_call[(endpoint, identity)] = now
        if endpoint == "search":
            reset = self.engine.take_search()
            if reset is not None:
                with self._rl_lock:
                    self.quota_rejected += 1
                return _json({"success": False, "error": "search_quota_exceeded",
                              "msg": "Daily search quota exceeded; it resets at 00:00 UTC."},
                             429, {"X-RateLimit-Reset": str(int(reset))})
        return None

    def _take_injection(self, method: str, path: str) -> Response | None:
        with self._inj_lock:
            for inj in self.injections:
                if inj.method in (method, "*") and re.search(inj.path_regex, path):
                    inj.count -= 1
                    if inj.count <= 0:
                        self.injections.remove(inj)
                    return inj.response()
        return None

    @staticmethod
    def _body(request: Request) -> dict[str, Any]:
        if not request.data:
            return {}
        try:
            body = json.loads(request.data)
        except ValueError as e:
            raise SimError(400, "invalid_args", "body is not JSON") from e
        if not isinstance(body, dict):
            raise SimError(400, "invalid_args", "body must be a JSON object")
        return body

    @staticmethod
    def _query_json(request: Request, name: str, default: Any) -> Any:
        raw = dict(parse_qsl(request.query_string.decode(), keep_blank_values=True)).get(name)
        if raw is None or raw == "":
            return default
        try:
            return json.loads(raw)
        except ValueError:
            return raw

    # -- offers ----------------------------------------------------------------------------

    def _search(self, body: dict[str, Any]) -> Response:
        offer_type = str(body.get("type") or "on-demand").lower()
        offer_type = {"ondemand": "on-demand", "interruptible": "bid"}.get(offer_type, offer_type)
        if offer_type not in ("on-demand", "bid", "reserved"):
            raise q.QueryError(f"invalid type {offer_type!r}")
        try:
            storage = float(body.get("allocated_storage") or 5.0)
            limit = int(body.get("limit") or DEFAULT_SEARCH_LIMIT)
        except (TypeError, ValueError) as e:
            raise q.QueryError("allocated_storage and limit must be numbers") from e
        now = self.engine.now()
        rows = self.engine.priced_offers(allocated_storage_gb=storage, offer_type=offer_type)
        rows = q.filter_offers(rows, body, now)
        order = body.get("order") or [["score", "desc"]]
        rows = q.sort_rows(rows, order,
                           lambda r, c: q.offer_column(r, c, now)[0])
        return _json({"offers": rows[:max(0, limit)]})

    def search(self, request: Request) -> Response:
        return self._search(self._body(request))

    def search_new(self, request: Request) -> Response:
        body = self._body(request)
        return self._search(body.get("q") or {})

    # -- instances -------------------------------------------------------------------------

    def create(self, request: Request, offer_id: int) -> Response:
        reply = self.engine.create(offer_id, self._body(request))
        status = self.engine.settings.low_bid_status if reply.get("success") is False else 200
        return _json(reply, status)

    def _rows(self) -> list[dict[str, Any]]:
        with self.engine._lock:
            return [instance_row(i, self.engine) for i in self.engine.listed_instances()]

    def list_instances(self, request: Request, version: int) -> Response:
        rows = self._rows()
        if version == 0:
            return _json({"instances_found": len(rows), "instances": rows})
        filters = self._query_json(request, "select_filters", {})
        order = self._query_json(request, "order_by", [{"col": "id", "dir": "asc"}])
        cols = self._query_json(request, "select_cols", ["*"])
        limit_raw = self._query_json(request, "limit", 25)
        token = self._query_json(request, "after_token", None)
        try:
            limit = int(limit_raw)
        except (TypeError, ValueError) as e:
            raise q.QueryError("limit must be an integer") from e
        limit = 5 if limit <= 0 else min(limit, 25)
        if not isinstance(order, list):
            raise q.QueryError("order_by must be a list")
        if not any(isinstance(o, dict) and o.get("col") == "id" for o in order):
            order = [*order, {"col": "id", "dir": "asc"}]
        label_counts: dict[str, int] = {}
        for row in rows:
            label_counts[row["label"] or ""] = label_counts.get(row["label"] or "", 0) + 1
        total = len(rows)
        rows = q.filter_instances(rows, filters)
        rows = q.sort_rows(rows, order, lambda r, c: r.get(c))
        offset = 0
        if token:
            try:
                offset = q.decode_token(str(token))
            except q.QueryError:
                return _json({"success": False, "error": "invalid_token",
                              "msg": "invalid after_token"}, 400)
        page = rows[offset:offset + limit]
        next_token = q.encode_token(offset + limit) if offset + limit < len(rows) else None
        if isinstance(cols, list) and cols and "*" not in cols:
            page = [{c: r.get(c) for c in cols} for r in page]
        return _json({"success": True, "instances_found": len(page),
                      "total_instances": total, "label_counts": label_counts,
                      "next_token": next_token, "instances": page})

    def instance_filters(self, request: Request) -> Response:
        combos: dict[tuple[Any, ...], dict[str, Any]] = {}
        for row in self._rows():
            key = (row["actual_status"], row["verification"], row["gpu_name"])
            combos.setdefault(key, {"actual_status": key[0], "verification": key[1],
                                    "gpu_name": key[2], "count": 0})["count"] += 1
        return _json({"filters": list(combos.values())})

    def show_instance(self, request: Request, instance_id: int) -> Response:
        with self.engine._lock:
            inst = self.engine.get_listed(instance_id)
            row = None if inst is None else instance_row(inst, self.engine)
        return _json({"instances": row})

    def destroy(self, request: Request, instance_id: int) -> Response:
        self.engine.destroy(instance_id)
        return _json({"success": True, "msg": f"Instance {instance_id} destroyed."})

    def manage(self, request: Request, instance_id: int) -> Response:
        body = self._body(request)
        if "state" in body:
            self.engine.set_state(instance_id, str(body["state"]))
        if "label" in body:
            label = body["label"]
            self.engine.set_label(instance_id, None if label is None else str(label))
        if "state" not in body and "label" not in body:
            raise SimError(400, "invalid_args", "expected state or label")
        return _json({"success": True})

    def change_bid(self, request: Request, instance_id: int) -> Response:
        self.engine.change_bid(instance_id, self._body(request).get("price"))
        return _json({"success": True})

    def reboot(self, request: Request, instance_id: int) -> Response:
        self.engine.set_state(instance_id, "stopped")
        self.engine.set_state(instance_id, "running")
        return _json({"success": True})

    def attach_ssh(self, request: Request, instance_id: int) -> Response:
        self.engine.attach_key(instance_id, str(self._body(request).get("ssh_key") or ""))
        return _json({"success": True, "msg": "SSH key attached successfully"})

    def detach_ssh(self, request: Request, instance_id: int, key_id: int) -> Response:
        self.engine.get(instance_id)
        return _json({"success": True})

    def list_keys(self, request: Request) -> Response:
        return _json(self.engine.account_keys)

    def add_key(self, request: Request) -> Response:
        row = self.engine.add_account_key(str(self._body(request).get("ssh_key") or ""))
        return _json({"success": True, "key": row, **row})

    def delete_key(self, request: Request, key_id: int) -> Response:
        self.engine.delete_account_key(key_id)
        return _json({"success": True})

    # -- account ---------------------------------------------------------------------------

    def user(self, request: Request) -> Response:
        credit = self.engine.credit()
        keys = self.engine.account_keys
        return _json({
            "id": 1, "key_id": 1, "email": "bot@example.com", "username": "sim",
            "fullname": "gpubot simulator", "credit": float(round(credit, 6)), "balance": 0.0,
            "balance_threshold": 5.0, "balance_threshold_enabled": True,
            "ssh_key": keys[-1]["public_key"] if keys else None,
            "host_agreement_accepted": False, "can_pay": True, "has_billing": True,
            "billing_creditonly": True, "email_verified": True, "got_signup_credit": True,
            "has_payout": False, "paid_expected": 0.0, "paid_verified": 0.0,
            "billed_expected": 0.0, "billed_verified": 0.0, "user": "sim", "sid": None,
        })

    def charges(self, request: Request) -> Response:
        filters = self._query_json(request, "select_filters", {}) or {}
        limit_raw = self._query_json(request, "limit", 20)
        token = self._query_json(request, "after_token", None)
        day = filters.get("day", {}) if isinstance(filters, dict) else {}
        t0 = float(day.get("gte", 0) or 0)
        t1 = float(day.get("lte", 1e12) or 1e12)
        results = []
        with self.engine._lock:
            self.engine.sync()
            now = self.engine.now()
            for inst in self.engine.instances.values():
                end = inst.destroyed_at or now
                if end < t0 or inst.created_at > t1:
                    continue
                results.append(_charge_row(inst, end))
        results.sort(key=lambda r: r["start"],
                     reverse=bool(self._query_json(request, "latest_first", False)))
        offset = q.decode_token(str(token)) if token else 0
        limit = max(1, min(int(limit_raw), 500))
        page = results[offset:offset + limit]
        next_token = q.encode_token(offset + limit) if offset + limit < len(results) else None
        total = sum(r["amount"] for r in results)
        return _json({"success": True, "count": len(page), "total": round(total, 6),
                      "next_token": next_token, "results": page})

    # -- admin -----------------------------------------------------------------------------

    def sim_outbid(self, request: Request, instance_id: int) -> Response:
        self.engine.outbid(instance_id)
        return _json({"success": True})

    def sim_status(self, request: Request, instance_id: int) -> Response:
        self.engine.set_host_status(instance_id, str(self._body(request).get("status")))
        return _json({"success": True})

    def sim_drop_ssh(self, request: Request, instance_id: int) -> Response:
        return _json({"success": True, "dropped": self.engine.drop_ssh(instance_id)})

    def sim_processes(self, request: Request, instance_id: int) -> Response:
        return _json({"pids": self.engine.processes(instance_id)})

    def sim_create(self, request: Request) -> Response:
        body = self._body(request)
        offer_id = body.get("offer_id")
        if offer_id is None:
            offers = self.engine.priced_offers(allocated_storage_gb=10.0, offer_type="on-demand")
            if not offers:
                raise SimError(409, "no_offers", "the market is empty")
            offer_id = min(offers, key=lambda o: o["dph_total"])["id"]
        reply = self.engine.create(int(offer_id), {
            "image": body.get("image") or "sim/orphan", "disk": body.get("disk") or 10,
            "label": body.get("label"), "price": body.get("price"), "runtype": "ssh"})
        return _json(reply)

    def sim_fail_creates(self, request: Request) -> Response:
        body = self._body(request)
        count = int(body.get("count", 1))
        status = int(body.get("status", 404))
        with self.engine._lock:
            self.engine.fail_creates = [status] * count
        return _json({"success": True})

    def sim_inject(self, request: Request) -> Response:
        body = self._body(request)
        try:
            inj = Injection(method=str(body.get("method", "*")).upper(),
                            path_regex=str(body["path_regex"]), status=int(body["status"]),
                            count=int(body.get("count", 1)),
                            retry_after=None if body.get("retry_after") is None
                            else float(body["retry_after"]),
                            json_body=bool(body.get("json_body", True)))
            re.compile(inj.path_regex)
        except (KeyError, TypeError, ValueError, re.error) as e:
            raise SimError(400, "invalid_args", f"bad injection: {e}") from e
        with self._inj_lock:
            self.injections.append(inj)
        return _json({"success": True})

    def sim_advance(self, request: Request) -> Response:
        seconds = float(self._body(request).get("seconds", 0))
        return _json({"success": True, "now": self.engine.advance(seconds)})

    def sim_settings(self, request: Request) -> Response:
        return _json(self.engine.settings.to_json())

    def sim_configure(self, request: Request) -> Response:
        body = self._body(request)
        try:
            if "profile" in body:
                base = profile(str(body.pop("profile")))
            else:
                base = self.engine.settings
            new = base.updated(body)
        except (ValueError, TypeError, re.error) as e:
            raise SimError(400, "invalid_args", f"bad settings: {e}") from e
        with self.engine._lock:
            self.engine.sync()  # what happened so far happened under the old settings
            self.engine.settings = new
        return _json(new.to_json())

    def sim_rate_limits(self, request: Request) -> Response:
        with self.engine._lock:
            day_reset = (self.engine.search_day + 1) * 86400
            used = self.engine.search_count
        with self._rl_lock:
            return _json({
                "limits_real_s": self.engine.settings.rate_limits_real_s,
                "enforce": self.engine.settings.rate_limit_enforce,
                "calls": dict(self.calls), "violations": dict(self.violations),
                "rejected": dict(self.rejected),
                "search_quota": {"per_day": self.engine.settings.search_quota_per_day,
                                 "used": used, "resets_at": day_reset,
                                 "rejected": self.quota_rejected},
            })

    def sim_rate_limits_reset(self, request: Request) -> Response:
        with self._rl_lock:
            self._last_call.clear()
            self.calls.clear()
            self.violations.clear()
            self.rejected.clear()
            self.quota_rejected = 0
        return _json({"success": True})

    def sim_pull_error(self, request: Request, instance_id: int) -> Response:
        self.engine.fail_pull(instance_id)
        return _json({"success": True})

    def sim_telemetry_gap(self, request: Request, instance_id: int) -> Response:
        body = self._body(request)
        try:
            seconds = float(body.get("seconds", 60.0))
        except (TypeError, ValueError) as e:
            raise SimError(400, "invalid_args", "seconds must be a number") from e
        self.engine.set_telemetry_gap(instance_id, seconds, str(body.get("kind", "null")))
        return _json({"success": True})

    def sim_billing(self, request: Request) -> Response:
        return _json(self.engine.billing())

    def sim_billing_one(self, request: Request, instance_id: int) -> Response:
        return _json(self.engine.billing(instance_id))

    def sim_state(self, request: Request) -> Response:
        with self.engine._lock:
            self.engine.sync()
            instances = [instance_row(i, self.engine) for i in self.engine.instances.values()
                         if i.destroyed_at is None]
            return _json({
                "now": self.engine.now(), "speed": self.engine.speed,
                "credit_usd": str(self.engine.credit()),
                "offers_available": len(self.engine.offers) - len(self.engine.rented),
                "offers_total": len(self.engine.offers),
                "instances": instances,
                "destroyed_instance_ids": [i.id for i in self.engine.instances.values()
                                           if i.destroyed_at is not None],
                "lingering_instance_ids": [i.id for i in self.engine.instances.values()
                                           if i.destroyed_at is not None
                                           and self.engine.is_listed(i)],
                "settings": self.engine.settings.to_json(),
                "pending_create_failures": len(self.engine.fail_creates),
                "injections": [vars(i) for i in self.injections],
            })


def _charge_row(inst: Instance, end: float) -> dict[str, Any]:
    hours = inst.running_seconds / 3600

    def item(kind: str, amount: Decimal, description: str) -> dict[str, Any]:
        return {"start": inst.created_at, "end": end, "type": kind, "source": None,
                "description": description, "amount": float(amount), "metadata": {},
                "items": []}

    return {
        "start": inst.created_at, "end": end, "type": "instance",
        "source": f"instance-{inst.id}",
        "description": f"Instance {inst.id} Charges - {(end - inst.created_at) / 3600:.2f} hours",
        "amount": float(inst.total_usd),
        "metadata": {"template_id": None, "label": inst.label, "instance_id": inst.id},
        "items": [
            item("gpu", inst.compute_usd,
                 f"{hours:.3f} hours at ${float(inst.compute_rate):.3f}/hour"),
            item("disk", inst.storage_usd,
                 f"{inst.disk_gb:g} GB at ${inst.offer['storage_cost']}/GB/month"),
            item("bwd", inst.bandwidth_down_usd, f"{inst.bytes_down} bytes downloaded"),
            item("bwu", inst.bandwidth_up_usd, f"{inst.bytes_up} bytes uploaded"),
        ],
    }


class SimServer:
    """A running simulator: HTTP on ``host:port`` (0 = OS-chosen), SSH per running instance.

    State lives in ``home/sim`` (``state.json``, instance roots, the SSH host key) and survives
    :meth:`stop`/:meth:`start` and new ``SimServer`` objects on the same home. ``stop()`` kills
    every instance's processes (files are kept). ``settings`` (default: :class:`SimSettings`
    defaults) are the fidelity switches at start; they are not persisted.
    """

    TICK_S = 0.2
    GPU_SAMPLE_S = 1.0

    def __init__(self, *, home: Path, host: str = "127.0.0.1", port: int = 0, seed: int = 0,
                 speed: float = 1.0, api_key: str = DEFAULT_API_KEY,
                 outbid_rate_per_hour: float = 0.0, offer_count: int = 300,
                 settings: SimSettings | None = None) -> None:
        self.home = Path(home)
        self.settings = (settings or SimSettings()).validate()
        self.host = host
        self.port = port
        self.seed = seed
        self.speed = speed
        self._api_key = api_key
        self.outbid_rate_per_hour = outbid_rate_per_hour
        self.offer_count = offer_count
        self.engine: SimEngine | None = None
        self.app: SimApp | None = None
        self._http: BaseWSGIServer | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    @property
    def api_key(self) -> str:
        return self._api_key

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` without a trailing slash (pass as ``server_url``/``VAST_URL``)."""
        if self._http is None:
            raise RuntimeError("SimServer is not started")
        return f"http://{self.host}:{self._http.server_port}"

    @property
    def control(self) -> SimControl:
        return SimControl(self.url, self._api_key)

    def start(self) -> SimServer:
        """Load or create the state, start HTTP and the background ticker; returns self."""
        if self._http is not None:
            return self
        self._stopping.clear()
        self.engine = SimEngine(home=self.home, seed=self.seed, speed=self.speed,
                                outbid_rate_per_hour=self.outbid_rate_per_hour,
                                offer_count=self.offer_count, ssh_host=self.host,
                                settings=self.settings)
        self.app = SimApp(self.engine, self._api_key)
        self._http = make_server(self.host, self.port, self.app, threaded=True,
                                 request_handler=_QuietHandler)
        self._http.daemon_threads = True  # type: ignore[attr-defined]
        self._threads = [
            threading.Thread(target=self._http.serve_forever, daemon=True, name="sim-http"),
            threading.Thread(target=self._tick_loop, daemon=True, name="sim-tick"),
        ]
        for t in self._threads:
            t.start()
        return self

    def _tick_loop(self) -> None:
        last = time.monotonic()
        last_sample = 0.0
        while not self._stopping.wait(self.TICK_S):
            now = time.monotonic()
            sample = now - last_sample >= self.GPU_SAMPLE_S
            try:
                assert self.engine is not None
                self.engine.tick(now - last, sample)
            except Exception:
                log.exception("simulator tick failed")
            if sample:
                last_sample = now
            last = now

    def stop(self) -> None:
        """Stop HTTP and SSH, kill instance processes, persist. Idempotent. Settings changed
        at run time are kept for a later :meth:`start` of this object."""
        if self._http is None:
            return
        assert self.engine is not None
        self.settings = self.engine.settings
        self._stopping.set()
        self._http.shutdown()
        self._http.server_close()
        for t in self._threads:
            t.join(timeout=5)
        assert self.engine is not None
        self.engine.close()
        self._http = None

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``gpubot sim``: serve until Ctrl-C. Prints the URL, the key and how to use them."""
    parser = argparse.ArgumentParser(prog="gpubot sim",
                                     description="vast.ai-compatible marketplace simulator")
    parser.add_argument("--port", type=int, default=0, help="HTTP port (default: any free)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--seed", type=int, default=0, help="market seed")
    parser.add_argument("--speed", type=float, default=1.0, help="sim seconds per real second")
    parser.add_argument("--home", type=Path, default=None, help="state dir (GPUBOT_HOME)")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--outbid-rate", type=float, default=0.0,
                        help="random outbids per running interruptible instance per sim hour")
    parser.add_argument("--offers", type=int, default=300, help="market size")
    parser.add_argument("--profile", choices=sorted(PROFILES), default=None,
                        help="fidelity profile: default, or realistic (everything on); "
                             "env GPUBOT_SIM_PROFILE")
    for name, kind in FIELD_TYPES.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=f"set_{name}", default=None,
                            metavar="NAME=S,..." if kind == "limits" else kind.upper(),
                            help=f"setting {name} (env {ENV_PREFIX}{name.upper()})")
    args = parser.parse_args(argv)
    try:
        base = profile(args.profile) if args.profile else None
        settings = from_env(os.environ, base)
        settings = settings.updated({name: getattr(args, f"set_{name}") for name in FIELD_TYPES
                                     if getattr(args, f"set_{name}") is not None})
    except (ValueError, re.error) as e:
        parser.error(str(e))
    home = args.home
    if home is None:
        from gpubot.settings import Settings

        home = Settings().home
    # Ctrl-C (SIGINT) and SIGTERM only set this event, from the moment before the server
    # starts: a KeyboardInterrupt raised between the start and a ``try`` (the window after the
    # URL is printed) once left the server unstopped and the process hanging at exit.
    stop_requested = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop_requested.set())
    server = SimServer(home=home, host=args.host, port=args.port, seed=args.seed,
                       speed=args.speed, api_key=args.api_key,
                       outbid_rate_per_hour=args.outbid_rate, offer_count=args.offers,
                       settings=settings)
    server.start()
    try:
        print(f"gpubot sim: serving {server.url}  (state in {server.home / 'sim'})")
        changed = {k: v for k, v in settings.to_json().items()
                   if v != getattr(SimSettings(), k)}
        print(f"  settings: {json.dumps(changed) if changed else 'defaults'}")
        print(f"  API key:  {server.api_key}")
        print(f"  bot/SDK:  export VAST_URL={server.url} VAST_API_KEY={server.api_key}")
        print(f"  CLI:      VAST_URL={server.url} vastai --url {server.url} "
              f"--api-key {server.api_key} search offers 'gpu_name=RTX_4090'")
        print(f"  Python:   VastAI(api_key={server.api_key!r}, server_url={server.url!r})")
        print("Ctrl-C to stop.", flush=True)
        stop_requested.wait()
        print("stopping…", flush=True)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
