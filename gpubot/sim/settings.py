"""Switches of the simulator's vast.ai fidelity behaviours (:class:`SimSettings`) and profiles.

Every switch can be set at start (``SimServer(settings=...)``, ``gpubot sim`` flags, or
``GPUBOT_SIM_<NAME>`` environment variables, ``GPUBOT_SIM_PROFILE`` for a profile) and changed
at run time (``POST /_sim/settings`` / :meth:`gpubot.sim.control.SimControl.configure`).

Profiles:
- ``default``: only what the bot already copes with. Bandwidth counters in kilobytes (the unit,
  not a fault); everything else off or harmless.
- ``realistic``: everything on, with the values of docs/simulator.md (fidelity table).

Pure: standard library only.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ENV_PREFIX = "GPUBOT_SIM_"

RATE_LIMIT_ENDPOINTS: tuple[str, ...] = (
    "search", "create", "list", "show", "destroy", "manage", "change_bid", "reboot", "ssh",
    "charges", "user",
)
"""Endpoint names a minimum call interval can be set for (see ``SimApp`` routes)."""

PULL_ERROR_STATUSES: tuple[str, ...] = ("exited", "loading", "created")

REALISTIC_RATE_LIMITS_S: dict[str, float] = {
    # thresholds of the 429 examples in vast's openapi.yaml (seconds between calls);
    # search has none there: 1 s is the simulator's choice
    "show": 2.0, "manage": 1.0, "list": 1.0, "destroy": 3.0, "change_bid": 5.5,
    "create": 4.5, "charges": 1.0, "search": 1.0,
}


@dataclass
class SimSettings:
    """The fidelity switches. Simulated seconds unless a name says ``real``."""

    # 1. min_bid drift: bounded random walk of each machine's min_bid (0 = off)
    min_bid_drift_pct: float = 0.0
    """Amplitude in percent around the machine's base min_bid (10 → base × [0.9, 1.1])."""
    min_bid_drift_step_s: float = 60.0
    """Simulated seconds between two steps of the walk."""
    # 2. destroyed rows linger
    destroyed_linger_s: float = 0.0
    """How long a destroyed instance stays listed as ``cur_state="unloaded"`` (0 = vanishes)."""
    # 3. bandwidth counter unit
    bandwidth_unit: str = "kb"
    """``kb``: ``inet_*_billed`` in kilobytes of 1000 bytes (vast's unit); ``bytes``: raw."""
    # 4. per-endpoint minimum interval between calls, REAL seconds
    rate_limits_real_s: dict[str, float] = field(default_factory=dict)
    """Endpoint name (:data:`RATE_LIMIT_ENDPOINTS`) → minimum real seconds between calls."""
    rate_limit_enforce: bool = True
    """False: calls that break an interval are only counted, never answered 429."""
    # 5. daily search quota per simulated UTC day (0 = unlimited)
    search_quota_per_day: int = 0
    # 6. telemetry gaps
    gpu_util_null_fraction: float = 0.0
    """Share of telemetry samples of a running instance with ``gpu_util`` null (no sample)."""
    gpu_util_zero_fraction: float = 0.0
    """Share of samples reported as 0 % with 0 memory ("0/0")."""
    telemetry_sample_s: float = 10.0
    """Simulated seconds one telemetry sample covers (the unit of the fractions above)."""
    # 7. image pulls
    provision_s: float = 3.0
    """Simulated seconds with ``actual_status`` null after create."""
    loading_s: float = 5.0
    """Simulated seconds in ``loading`` (image pull) before ``running``; also after a start."""
    pull_error_pattern: str | None = None
    """Regex (``re.search``) on the image name: matching images fail their pull."""
    pull_error_status: str = "exited"
    """``actual_status`` a failed pull ends in (``exited``, ``loading`` or ``created``)."""
    # 8. the low-bid "created stopped" reply
    low_bid_status: int = 200
    """HTTP status of the reply to a bid below min_bid (200 or an error status, e.g. 400);
    the body always carries ``success: false`` and ``new_contract``."""

    def validate(self) -> SimSettings:
        """Raise ``ValueError`` on an impossible combination; returns self."""
        if self.bandwidth_unit not in ("kb", "bytes"):
            raise ValueError("bandwidth_unit must be 'kb' or 'bytes'")
        for name in ("min_bid_drift_pct", "destroyed_linger_s", "provision_s", "loading_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.min_bid_drift_pct >= 100:
            raise ValueError("min_bid_drift_pct must be < 100")
        for name in ("min_bid_drift_step_s", "telemetry_sample_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if not 0 <= self.gpu_util_null_fraction + self.gpu_util_zero_fraction <= 1 or min(
                self.gpu_util_null_fraction, self.gpu_util_zero_fraction) < 0:
            raise ValueError("telemetry gap fractions must be >= 0 and sum to <= 1")
        if self.search_quota_per_day < 0:
            raise ValueError("search_quota_per_day must be >= 0")
        unknown = set(self.rate_limits_real_s) - set(RATE_LIMIT_ENDPOINTS)
        if unknown:
            raise ValueError(f"unknown rate-limit endpoints {sorted(unknown)}; "
                             f"known: {', '.join(RATE_LIMIT_ENDPOINTS)}")
        if any(v < 0 for v in self.rate_limits_real_s.values()):
            raise ValueError("rate limits must be >= 0 seconds")
        if self.pull_error_pattern is not None:
            re.compile(self.pull_error_pattern)
        if self.pull_error_status not in PULL_ERROR_STATUSES:
            raise ValueError(f"pull_error_status must be one of {PULL_ERROR_STATUSES}")
        if not (self.low_bid_status == 200 or 400 <= self.low_bid_status <= 599):
            raise ValueError("low_bid_status must be 200 or an error status 400-599")
        return self

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def updated(self, changes: Mapping[str, Any]) -> SimSettings:
        """A validated copy with ``changes`` (field name → value, coerced) applied.

        Unknown names raise ``ValueError``.
        """
        values = self.to_json()
        for name, raw in changes.items():
            if name not in values:
                raise ValueError(f"unknown simulator setting {name!r}")
            values[name] = coerce(name, raw)
        return SimSettings(**values).validate()


FIELD_TYPES: dict[str, str] = {
    "min_bid_drift_pct": "float", "min_bid_drift_step_s": "float",
    "destroyed_linger_s": "float", "bandwidth_unit": "str", "rate_limits_real_s": "limits",
    "rate_limit_enforce": "bool", "search_quota_per_day": "int",
    "gpu_util_null_fraction": "float", "gpu_util_zero_fraction": "float",
    "telemetry_sample_s": "float", "provision_s": "float", "loading_s": "float",
    "pull_error_pattern": "optstr", "pull_error_status": "str", "low_bid_status": "int",
}


def parse_limits(raw: str) -> dict[str, float]:
    """``"create=4.5,destroy=3"`` (or a JSON object) → ``{"create": 4.5, "destroy": 3.0}``."""
    raw = raw.strip()
    if not raw:
        return {}
    if raw.startswith("{"):
        return {str(k): float(v) for k, v in json.loads(raw).items()}
    out: dict[str, float] = {}
    for part in raw.split(","):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"rate limit {part!r} is not NAME=SECONDS")
        out[name.strip()] = float(value)
    return out


def coerce(name: str, raw: Any) -> Any:
    """``raw`` (JSON value or string from a flag/env) as the type of field ``name``."""
    kind = FIELD_TYPES[name]
    if kind == "float":
        return float(raw)
    if kind == "int":
        return int(raw)
    if kind == "bool":
        if isinstance(raw, str):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(f"{name}: not a boolean: {raw!r}")
            return raw.lower() in ("1", "true", "yes", "on")
        return bool(raw)
    if kind == "limits":
        if isinstance(raw, str):
            return parse_limits(raw)
        return {str(k): float(v) for k, v in dict(raw).items()}
    if kind == "optstr":
        return None if raw in (None, "") else str(raw)
    return str(raw)


PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    "realistic": {
        "min_bid_drift_pct": 10.0,
        "min_bid_drift_step_s": 60.0,
        "destroyed_linger_s": 300.0,
        "bandwidth_unit": "kb",
        "rate_limits_real_s": dict(REALISTIC_RATE_LIMITS_S),
        "search_quota_per_day": 2000,
        "gpu_util_null_fraction": 0.05,
        "gpu_util_zero_fraction": 0.05,
        "loading_s": 180.0,
        "pull_error_pattern": r"(^|/)(does-not-exist|nonexistent)",
        "low_bid_status": 400,
    },
}


def profile(name: str) -> SimSettings:
    """The settings of profile ``name`` (``default`` or ``realistic``); ``ValueError`` else."""
    if name not in PROFILES:
        raise ValueError(f"unknown simulator profile {name!r}; known: {', '.join(PROFILES)}")
    return SimSettings().updated(PROFILES[name])


def from_env(environ: Mapping[str, str], base: SimSettings | None = None) -> SimSettings:
    """``base`` (else the ``GPUBOT_SIM_PROFILE`` profile, else default) with every
    ``GPUBOT_SIM_<FIELD NAME IN CAPITALS>`` variable applied."""
    settings = base if base is not None else profile(environ.get(f"{ENV_PREFIX}PROFILE")
                                                      or "default")
    changes = {name: environ[f"{ENV_PREFIX}{name.upper()}"] for name in FIELD_TYPES
               if f"{ENV_PREFIX}{name.upper()}" in environ}
    return settings.updated(changes)
