"""offer_from_vast / observation_from_vast on rows shaped like vast's offer and instance rows."""

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
    # inet_*_billed are kilobytes of 1000 bytes on the wire; the observation carries bytes.
    assert obs.bytes_up_billed == 120_345_000
    assert obs.bytes_down_billed == 2_200_111_000
    # Compute excludes storage: dph_total 0.1821 - storage_total_cost 0.0021.
    assert obs.compute_per_hour_usd == Decimal("0.1800")
    assert obs.readable
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
    assert obs.bytes_up_billed is None and obs.bytes_down_billed is None
    assert set(obs.raw_status) >= {"actual_status", "cur_state", "intended_status", "next_state"}


def test_sdk_converted_extra_env_and_missing_start_date_are_fine() -> None:
    row = {**STATES["running_bid"], "extra_env": {"FOO": "bar"}, "start_date": None}
    assert observation_from_vast(row).started_at is None


def test_instance_row_without_id_is_unreadable_not_an_exception() -> None:
    obs = observation_from_vast({"actual_status": "running"})
    assert obs.readable is False
    assert obs.provider_id == ""


# ------------------------------------------------------------------ defensive instance parsing

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from gpubot.providers.vastai.parsing import (  # noqa: E402
    MAX_COUNTER_KB,
    MAX_PRICE_PER_HOUR_USD,
    gpu_util_sample,
)

RUNNING = STATES["running_bid"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dph_total", 1e12),
        ("dph_total", float("nan")),
        ("dph_total", "inf"),
        ("dph_total", -0.5),
        ("dph_total", [1]),
        ("storage_cost", 1e30),
        ("storage_total_cost", "abc"),
        ("min_bid", -1),
        ("inet_up_billed", "garbage"),
        ("inet_up_billed", -5),
        ("inet_down_billed", float("inf")),
        ("inet_down_billed", MAX_COUNTER_KB * 10),
        ("inet_down_billed", {"kb": 1}),
    ],
)
def test_a_bad_price_or_counter_makes_the_row_unreadable_but_keeps_the_id(
    field: str, value: Any
) -> None:
    obs = observation_from_vast({**RUNNING, field: value})
    assert obs.readable is False
    assert obs.provider_id == "30109581"
    assert obs.label == "slack:U123:train"
    assert obs.status is ProviderStatus.UNKNOWN


def test_counters_in_scientific_notation_are_kilobytes() -> None:
    obs = observation_from_vast({**RUNNING, "inet_up_billed": "1.5e6", "inet_down_billed": 0})
    assert obs.readable
    assert obs.bytes_up_billed == 1_500_000_000
    assert obs.bytes_down_billed == 0


def test_compute_falls_back_to_storage_cost_times_disk_without_storage_total_cost() -> None:
    row = {**RUNNING, "storage_total_cost": None, "dph_total": 0.2, "storage_cost": 0.36,
           "disk_space": 20.0}
    # 0.36 $/GB/month x 20 GB / 720 h = 0.01 $/h of storage inside dph_total.
    assert observation_from_vast(row).compute_per_hour_usd == Decimal("0.19")


@pytest.mark.parametrize("bad_id", [None, True, "abc", -3, 0, 1.5, float("nan"), 2**70, "12a"])
def test_ids_must_be_positive_integers(bad_id: Any) -> None:
    obs = observation_from_vast({**RUNNING, "id": bad_id})
    assert obs.readable is False and obs.provider_id == ""


def test_ids_given_as_float_or_digit_string_are_accepted() -> None:
    assert observation_from_vast({**RUNNING, "id": 42.0}).provider_id == "42"
    assert observation_from_vast({**RUNNING, "id": " 42 "}).provider_id == "42"


def test_long_and_control_char_strings_are_bounded_and_cleaned() -> None:
    row = {
        **RUNNING,
        "label": "gpubot:\x1b[31mj-1" + "x" * 500,
        "status_msg": "boom\r\n\x00" + "y" * 10_000,
        "gpu_name": "RTX\t4090" + "z" * 100,
        "ssh_host": "h" * 300,
    }
    obs = observation_from_vast(row)
    assert obs.readable
    assert obs.label is not None and len(obs.label) <= 128
    assert "\x1b" not in obs.label
    assert len(obs.status_message) <= 500 and "\x00" not in obs.status_message
    assert len(obs.gpu_name) <= 64 and "\t" not in obs.gpu_name
    # A host too long for its column (or with odd characters) is no endpoint; the direct pair
    # of the same row is used instead.
    assert obs.ssh_host == "203.0.113.7" and obs.ssh_port == 40022


@pytest.mark.parametrize("port", [0, 70000, -22, "x", float("inf"), "1e400"])
def test_bad_ssh_port_is_no_endpoint(port: Any) -> None:
    row = {**RUNNING, "ssh_port": port, "ports": None}
    assert ssh_endpoint(row) == (None, None)


@pytest.mark.parametrize(
    ("util", "temp", "expected"),
    [
        (None, 61.0, None),  # no sample
        (0.0, 0.0, None),  # the 0/0 pair hosts send without a reading
        (0.0, None, 0.0),  # a real idle reading without temperature
        (0.0, 34.0, 0.0),  # a real idle GPU
        (87.5, 61.0, 87.5),
        (150.0, 61.0, None),  # out of range
        (float("nan"), 61.0, None),
        ("12.5", 40.0, 12.5),
    ],
)
def test_gpu_util_sample(util: Any, temp: Any, expected: float | None) -> None:
    assert gpu_util_sample({"gpu_util": util, "gpu_temp": temp}) == expected


def test_pull_error_in_status_msg_is_carried_verbatim() -> None:
    message = (
        "Error response from daemon: pull access denied for nosuch/image, repository does not "
        "exist or may require 'docker login': denied: requested access to the resource is denied"
    )
    row = {**STATES["provisioning_null"], "actual_status": "loading", "status_msg": message}
    obs = observation_from_vast(row)
    assert obs.pull_error == message
    manifest = "Error response from daemon: manifest for pytorch/pytorch:nope not found: " \
        "manifest unknown: manifest unknown"
    assert observation_from_vast({**row, "status_msg": manifest}).pull_error == manifest
    assert observation_from_vast({**row, "status_msg": "pulling layer 3/9"}).pull_error is None
    assert observation_from_vast(RUNNING).pull_error is None


_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=300),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
_FIELDS = [
    "id", "label", "dph_total", "dph_base", "storage_cost", "storage_total_cost", "min_bid",
    "inet_up_billed", "inet_down_billed", "gpu_util", "gpu_temp", "ssh_host", "ssh_port",
    "public_ipaddr", "ports", "status_msg", "actual_status", "cur_state", "intended_status",
    "next_state", "is_bid", "disk_space", "num_gpus", "gpu_name", "start_date",
]


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(_FIELDS), _JUNK, max_size=len(_FIELDS)))
def test_random_junk_rows_never_raise_and_accepted_values_are_in_bounds(
    junk: dict[str, Any],
) -> None:
    obs = observation_from_vast({**RUNNING, **junk})
    assert obs.label is None or (len(obs.label) <= 128 and obs.label.isprintable())
    if not obs.readable:
        return
    assert obs.provider_id.isdigit() and 0 < int(obs.provider_id) < 2**63
    assert Decimal(0) <= obs.price_per_hour_usd <= MAX_PRICE_PER_HOUR_USD
    assert obs.compute_per_hour_usd is None or (
        Decimal(0) <= obs.compute_per_hour_usd <= obs.price_per_hour_usd
    )
    for counter in (obs.bytes_up_billed, obs.bytes_down_billed):
        assert counter is None or 0 <= counter <= MAX_COUNTER_KB * 1000
    assert obs.gpu_util_pct is None or 0.0 <= obs.gpu_util_pct <= 100.0
    assert obs.ssh_port is None or 1 <= obs.ssh_port <= 65535
    assert obs.ssh_host is None or len(obs.ssh_host) <= 255
    assert len(obs.status_message) <= 500 and obs.status_message.isprintable()
    assert len(obs.gpu_name) <= 64


def test_non_mapping_row_is_unreadable() -> None:
    assert observation_from_vast(["not", "a", "row"]).readable is False
