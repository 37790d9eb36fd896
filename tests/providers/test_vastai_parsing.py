"""offer_from_vast / observation_from_vast on recorded-shape rows (vast_api.md §3.4, §4.1-4.3)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gpubot.models import ProviderStatus
from gpubot.providers.vastai.parsing import (
    observation_from_vast,
    offer_from_vast,
    ssh_endpoint,
    status_from_vast,
)

FIXTURES = Path(__file__).parent / "fixtures"


def _load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


OFFERS = _load("offers.json")
STATES: dict[str, dict[str, Any]] = _load("instance_states.json")


def test_offer_units_and_money() -> None:
    offer = offer_from_vast(OFFERS[0])
    assert offer.offer_id == "9123456"
    assert offer.gpu_name == "RTX 4090"
    assert offer.num_gpus == 1
    assert offer.gpu_ram_gb == pytest.approx(24.564)
    assert offer.price_per_hour_usd == Decimal("0.3567")  # exact: Decimal(str(float))
    assert offer.min_bid_per_hour_usd == Decimal("0.18")
    assert offer.storage_per_gb_month_usd == Decimal("0.15")
    assert offer.upload_per_gb_usd == Decimal("0.005")
    assert offer.download_per_gb_usd == Decimal("0.003")
    assert offer.reliability == pytest.approx(0.991)
    assert offer.cuda_max == pytest.approx(12.4)
    assert offer.compute_cap == 890
    assert offer.dlperf == pytest.approx(98.1)
    assert offer.datacenter is False
    assert offer.verified is True
    assert (offer.host_id, offer.machine_id) == ("555", "4242")
    assert offer.disk_space_gb == 200.0
    assert offer.geolocation == "Texas, US"
    assert offer.inet_down_mbps == 900.0
    assert offer.compute_per_hour_usd == Decimal("0.35")  # dph_base: compute, no storage
    assert offer.storage_per_hour_usd == Decimal("0.0067")


def test_datacenter_offer_with_sdk_added_key() -> None:
    offer = offer_from_vast(OFFERS[1])
    assert offer.datacenter is True
    assert offer.num_gpus == 2
    assert offer.gpu_ram_gb == pytest.approx(81.92)
    assert offer.price_per_hour_usd == Decimal("2.4121")
    assert offer.upload_per_gb_usd == Decimal("0.0")


def test_raw_server_row_without_sdk_keys() -> None:
    """No ``datacenter`` key: hosting_type decides; reliability2 and dph_total as a string."""
    offer = offer_from_vast(OFFERS[2])
    assert offer.datacenter is True  # hosting_type == 1
    assert offer.verified is False  # verification == "unverified"
    assert offer.reliability == pytest.approx(0.97)
    assert offer.price_per_hour_usd == Decimal("0.41")
    assert offer.min_bid_per_hour_usd == Decimal("0.41")  # no min_bid: falls back to dph_total
    assert offer.dlperf == 0.0
    assert offer.geolocation == ""


@pytest.mark.parametrize(
    "row", [{}, {"id": 1, "dph_total": 0.2}, {"id": 1, "gpu_name": "RTX 4090", "dph_total": None}]
)
def test_unusable_offer_rows_raise_value_error(row: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        offer_from_vast(row)


EXPECTED_STATUS = {
    "running_bid": ProviderStatus.RUNNING,
    "running_on_demand_direct_only": ProviderStatus.RUNNING,
    "provisioning_null": ProviderStatus.PROVISIONING,
    "created": ProviderStatus.PROVISIONING,
    "loading": ProviderStatus.PROVISIONING,
    "oci_failure": ProviderStatus.FAILED,
    "outbid_dstack": ProviderStatus.OUTBID,
    "outbid_scheduling": ProviderStatus.OUTBID,
    "outbid_exited": ProviderStatus.OUTBID,
    "stopped_on_demand": ProviderStatus.STOPPED,
    "exited_on_demand": ProviderStatus.EXITED,
    "exited_bid_not_paused": ProviderStatus.EXITED,
    "offline": ProviderStatus.OFFLINE,
    "unknown_heartbeat": ProviderStatus.OFFLINE,
    "rebooting": ProviderStatus.PROVISIONING,
    "unknown_value": ProviderStatus.UNKNOWN,
}


def test_every_fixture_has_an_expectation() -> None:
    assert set(STATES) == set(EXPECTED_STATUS)


@pytest.mark.parametrize("name", sorted(EXPECTED_STATUS))
def test_status_map(name: str) -> None:
    assert status_from_vast(STATES[name]) is EXPECTED_STATUS[name]
    assert observation_from_vast(STATES[name]).status is EXPECTED_STATUS[name]


def test_same_stopped_row_is_stopped_on_demand_but_outbid_when_interruptible() -> None:
    row = dict(STATES["stopped_on_demand"])
    assert status_from_vast(row) is ProviderStatus.STOPPED
    row["is_bid"] = True
    assert status_from_vast(row) is ProviderStatus.OUTBID


@pytest.mark.parametrize(
    "fields",
    [
        {"actual_status": "Running"},  # case and whitespace are not trusted
        {"actual_status": " running "},
    ],
)
def test_status_normalisation(fields: dict[str, Any]) -> None:
    assert status_from_vast({**STATES["loading"], **fields}) is ProviderStatus.RUNNING


def test_status_of_a_bare_row_defaults_to_provisioning() -> None:
    assert status_from_vast({}) is ProviderStatus.PROVISIONING
    assert status_from_vast({"actual_status": 7}) is ProviderStatus.UNKNOWN


def test_observation_fields() -> None:
    obs = observation_from_vast(STATES["running_bid"])
    assert obs.provider_id == "30109581"
    assert obs.label == "slack:U123:train"
    assert obs.is_bid is True
    assert obs.price_per_hour_usd == Decimal("0.1821")
    assert obs.min_bid_per_hour_usd == Decimal("0.16")
    assert obs.storage_per_gb_month_usd == Decimal("0.15")
    assert obs.disk_gb == 20.0
    assert obs.gpu_util_pct == 87.5
    assert obs.gpu_name == "RTX 4090"
    assert obs.num_gpus == 1
    assert obs.started_at == datetime.fromtimestamp(1795870000.0, tz=UTC)
    assert obs.started_at is not None and obs.started_at.tzinfo is UTC
    assert obs.status_message.startswith("success, running")
    assert obs.raw_status["actual_status"] == "running"
    assert obs.raw_status["cur_state"] == "running"
    assert obs.raw_status["inet_up_billed"] == 120345.0
    assert obs.raw_status["inet_down_billed"] == 2200111.0
    assert obs.ssh_ready


def test_ssh_prefers_proxy_like_vastai_ssh_url() -> None:
    assert ssh_endpoint(STATES["running_bid"]) == ("ssh4.vast.ai", 19580)


def test_ssh_falls_back_to_direct_port_given_as_string() -> None:
    obs = observation_from_vast(STATES["running_on_demand_direct_only"])
    assert (obs.ssh_host, obs.ssh_port) == ("203.0.113.7", 40022)
    assert isinstance(obs.ssh_port, int)


def test_no_ssh_while_provisioning() -> None:
    obs = observation_from_vast(STATES["provisioning_null"])
    assert (obs.ssh_host, obs.ssh_port) == (None, None)
    assert obs.gpu_util_pct is None
    assert not obs.ssh_ready
    assert obs.status_message == ""


def test_bandwidth_counters_absent_are_not_invented() -> None:
    row = {k: v for k, v in STATES["loading"].items() if not k.endswith("_billed")}
    obs = observation_from_vast(row)
    assert "inet_up_billed" not in obs.raw_status
    assert set(obs.raw_status) >= {"actual_status", "cur_state", "intended_status", "next_state"}


def test_sdk_converted_extra_env_and_missing_start_date_are_fine() -> None:
    row = {**STATES["running_bid"], "extra_env": {"FOO": "bar"}, "start_date": None}
    assert observation_from_vast(row).started_at is None


def test_instance_row_without_id_raises() -> None:
    with pytest.raises(ValueError):
        observation_from_vast({"actual_status": "running"})
