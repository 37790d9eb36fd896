"""Python client for the simulator's admin endpoints (``/_sim/…``, same bearer key).

Every method makes one HTTP call and raises :class:`SimControlError` on a non-2xx reply.
Proxy environment variables are ignored (the simulator is local).
"""

from __future__ import annotations

from typing import Any

import requests


class SimControlError(RuntimeError):
    """An admin call failed; ``status`` is the HTTP status."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"simulator admin call failed: HTTP {status}: {text[:300]}")
        self.status = status


class SimControl:
    """Fault and time controls of a running simulator at ``url`` (no trailing slash)."""

    def __init__(self, url: str, api_key: str, *, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._timeout = timeout_s
        self._session = requests.Session()
        self._session.trust_env = False

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        r = self._session.request(method, self.url + path, json=body, headers=self._headers,
                                  timeout=self._timeout)
        if r.status_code >= 300:
            raise SimControlError(r.status_code, r.text)
        return r.json()

    def outbid(self, instance_id: int | str) -> None:
        """Pause an interruptible instance as if outbid: processes die, files stay, storage
        keeps billing, ``min_bid`` rises above its bid."""
        self._call("POST", f"/_sim/instances/{int(instance_id)}/outbid", {})

    def set_offline(self, instance_id: int | str, status: str = "offline") -> None:
        """Set ``actual_status`` to ``offline``, ``unknown`` or ``exited`` (SSH goes away);
        ``running`` brings it back."""
        self._call("POST", f"/_sim/instances/{int(instance_id)}/status", {"status": status})

    def fail_next_creates(self, n: int, status: int = 404) -> None:
        """The next ``n`` creates fail: 404 ``no_such_ask`` by default, else ``status``."""
        self._call("POST", "/_sim/fail_next_creates", {"count": n, "status": status})

    def inject(self, method: str, path_regex: str, status: int, count: int = 1,
               retry_after: float | None = None, json_body: bool = True) -> None:
        """Answer the next ``count`` requests whose method matches (``*`` = any) and whose
        path matches ``path_regex`` (``re.search`` on e.g. ``/api/v0/bundles/``) with
        ``status``: JSON ``{"success":false,...}`` or plain text, optional ``Retry-After``."""
        self._call("POST", "/_sim/inject", {
            "method": method, "path_regex": path_regex, "status": status, "count": count,
            "retry_after": retry_after, "json_body": json_body})

    def drop_ssh(self, instance_id: int | str) -> int:
        """Close the instance's open SSH connections; returns how many were closed."""
        return int(self._call("POST", f"/_sim/instances/{int(instance_id)}/drop_ssh", {})
                   ["dropped"])

    def advance(self, seconds: float) -> float:
        """Move the simulated clock forward; returns the new simulated epoch time."""
        return float(self._call("POST", "/_sim/advance", {"seconds": seconds})["now"])

    def billing(self, instance_id: int | str | None = None) -> dict[str, Any]:
        """Billing totals. With an id: ``compute_usd``, ``storage_usd``, ``bandwidth_usd``,
        ``total_usd`` (decimal strings), ``inet_down_bytes``/``inet_up_bytes`` (always bytes,
        whatever ``bandwidth_unit`` the rows use). Without:
        ``{"instances": {id: row}, "total_usd", "credit_usd"}``. Destroyed instances count."""
        if instance_id is None:
            return dict(self._call("GET", "/_sim/billing"))
        return dict(self._call("GET", f"/_sim/billing/{int(instance_id)}"))

    def state(self) -> dict[str, Any]:
        """Clock, credit, market size, live instance rows, pending faults."""
        return dict(self._call("GET", "/_sim/state"))

    def create_instance(self, label: str | None, offer_id: int | None = None) -> str:
        """Rent directly (cheapest offer unless ``offer_id``), e.g. to plant an orphan."""
        reply = self._call("POST", "/_sim/instances", {"label": label, "offer_id": offer_id})
        return str(reply["new_contract"])

    def settings(self) -> dict[str, Any]:
        """The current fidelity switches (:class:`gpubot.sim.settings.SimSettings` as JSON)."""
        return dict(self._call("GET", "/_sim/settings"))

    def configure(self, profile: str | None = None, **changes: Any) -> dict[str, Any]:
        """Change switches now (e.g. ``configure(destroyed_linger_s=60)``); ``profile``
        first resets every switch to that profile. Returns the new settings; a bad name or
        value is a :class:`SimControlError` 400 and changes nothing."""
        body = dict(changes)
        if profile is not None:
            body["profile"] = profile
        return dict(self._call("POST", "/_sim/settings", body))

    def rate_limits(self) -> dict[str, Any]:
        """``limits_real_s``, ``enforce``, per-endpoint ``calls``, ``violations`` (calls that
        broke the endpoint's minimum interval), ``rejected`` (answered 429), and
        ``search_quota`` (``per_day``, ``used``, ``resets_at`` epoch, ``rejected``)."""
        return dict(self._call("GET", "/_sim/rate_limits"))

    def reset_rate_limits(self) -> None:
        """Zero the call/violation counters and forget the last call times."""
        self._call("POST", "/_sim/rate_limits/reset", {})

    def fail_pull(self, instance_id: int | str) -> None:
        """The instance's current (or next) image pull fails once, ending in
        ``settings.pull_error_status`` with a docker ``manifest ... not found`` status_msg."""
        self._call("POST", f"/_sim/instances/{int(instance_id)}/pull_error", {})

    def telemetry_gap(self, instance_id: int | str, seconds: float, kind: str = "null") -> None:
        """For ``seconds`` simulated seconds the row reports ``gpu_util`` null (``null``) or
        0 with 0 memory (``zero``)."""
        self._call("POST", f"/_sim/instances/{int(instance_id)}/telemetry_gap",
                   {"seconds": seconds, "kind": kind})

    def instance_processes(self, instance_id: int | str) -> list[int]:
        """Pids of the instance's live processes (marker in /proc/*/environ)."""
        return [int(p) for p in
                self._call("GET", f"/_sim/instances/{int(instance_id)}/processes")["pids"]]
