"""Property-based fuzzing (hypothesis) of the three inputs an attacker controls.

* ``parse_command`` over random text (printable, any unicode, control characters, and
  command-shaped token soup) raises nothing but ``CommandError`` subclasses, and what it
  accepts never carries shell metacharacters outside ``free_text`` parameters.
* ``handle_action`` over random action ids, values and clickers never raises and never
  changes a job the clicker is not entitled to (requester or admin, on exactly that job id).
* Interactivity payloads of random JSON shapes, correctly signed, never get a 5xx.

The CI variants run about 200 derandomized examples each; ``-m slow`` runs 10,000.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from werkzeug.test import Client

from gpubot.chat.dispatch import JOB_ACTIONS, handle_action
from gpubot.commands.grammar import SHELL_METACHARACTERS, parse_command
from gpubot.commands.types import LaunchCommand, SweepCommand
from gpubot.config import BotConfig, load_config_text
from gpubot.deps import EngineDeps
from gpubot.errors import CommandError
from gpubot.templates import RESERVED_VERBS, RESOURCE_KEYS, ParamType
from tests.bot.conftest import ADMIN, ALICE, CHANNEL, MALLORY, sign
from tests.fixtures.slack_fake import SlackFake
from tests.security.conftest import (
    BOB,
    SECURITY_CONFIG,
    all_jobs,
    launch,
    post,
    wait_until,
)

CONFIG: BotConfig = load_config_text(SECURITY_CONFIG, name="security.toml")

CI = settings(max_examples=200, derandomize=True, database=None, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
LONG = settings(max_examples=10_000, database=None, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

# -- parse_command ----------------------------------------------------------------------------

_NASTY = "\x00\x01\x1b\x7f\n\r\t\u0085\u00a0\u200b\u200e\u202e\u2028\u2029\ufeff\U000e0001"
_ANY_CHAR = st.one_of(st.characters(), st.sampled_from(_NASTY + ";|&<>`$\"'\u201c\u2018=,"))
_PARAM_KEYS = sorted({p for t in CONFIG.templates.values() for p in t.params})
_WORDS = st.one_of(
    st.sampled_from([*RESERVED_VERBS, *CONFIG.templates, "/gpu", "all", "show", "set",
                     "team", "j-3f9a1c2e", "g-3f9a1c2e", "by", "user", "week"]),
    st.text(_ANY_CHAR, max_size=8),
)
_VALUES = st.one_of(
    st.sampled_from(["2e-5", "1e999", "nan", "inf", "-0", "$5", "$$5", "4090,a100", "h100",
                     "yes", "auto", "50GB", "2h30m", "$(id)", "`id`", "${IFS}", "../..",
                     "<@U123>", "\u0430", "fast", "true", "x" * 300]),
    st.text(_ANY_CHAR, max_size=12),
)


@st.composite
def _command_text(draw: st.DrawFn) -> str:
    tokens = [draw(_WORDS)]
    for _ in range(draw(st.integers(0, 6))):
        key = draw(st.one_of(st.sampled_from([*_PARAM_KEYS, *RESOURCE_KEYS]), _WORDS))
        value = draw(_VALUES)
        quote_char = draw(st.sampled_from(["", '"', "'", "\u201c"]))
        tokens.append(f"{key}={quote_char}{value}{quote_char}")
    return draw(st.sampled_from([" ", "  ", "\t"])).join(tokens)


TEXTS = st.one_of(st.text(_ANY_CHAR, max_size=300), _command_text())


def _check_parse(text: str) -> None:
    try:
        command = parse_command(text, CONFIG)
    except CommandError as e:
        assert isinstance(e.user_message, str) and e.user_message
        return
    if isinstance(command, LaunchCommand | SweepCommand):
        template = CONFIG.templates[command.template]
        values: list[tuple[str, object]] = list(command.params.items())
        if isinstance(command, SweepCommand):
            values += [(k, v) for k, vs in command.axes.items() for v in vs]
        for key, value in values:
            spec = template.params[key]
            if spec.type is ParamType.STR and not spec.free_text:
                assert not set(str(value)) & SHELL_METACHARACTERS, (text, key, value)
            assert "\x00" not in str(value)


@CI
@given(TEXTS)
def test_parse_command_only_raises_command_errors(text: str) -> None:
    _check_parse(text)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@LONG
@given(TEXTS)
def test_parse_command_only_raises_command_errors_long(text: str) -> None:
    _check_parse(text)


# -- handle_action ----------------------------------------------------------------------------


@pytest.fixture
def jobs(deps: EngineDeps) -> dict[str, str]:
    """job id -> requester: two of Alice's (queued, awaiting approval) and one of Bob's."""
    return {
        launch(deps, "train lr=2e-5", user=ALICE, key="fz-1"): ALICE,
        launch(deps, "train gpu=h100", user=ALICE, key="fz-2"): ALICE,
        launch(deps, "train lr=3e-5", user=BOB, key="fz-3"): BOB,
    }


_ACTION_IDS = st.one_of(st.sampled_from(sorted(JOB_ACTIONS)), st.text(_ANY_CHAR, max_size=40))
_CLICKERS = st.one_of(st.sampled_from([ALICE, BOB, ADMIN, MALLORY]), st.text(max_size=30))


def _values(job_ids: list[str]) -> st.SearchStrategy[str]:
    job = st.sampled_from(job_ids)
    suffix = st.one_of(st.sampled_from(["NaN-ish", "1", "0", "-3", "1e3", "abc", ":", ""]),
                       st.text(_ANY_CHAR, max_size=20))
    return st.one_of(
        job,
        st.builds(lambda j, s: f"{j}:{s}", job, suffix),
        st.builds(lambda j, s: f"{j}{s}", job, st.text(_ANY_CHAR, min_size=1, max_size=5)),
        st.text(_ANY_CHAR, max_size=60),
    )


def _check_action(deps: EngineDeps, jobs: dict[str, str], data: st.DataObject) -> None:
    action_id = data.draw(_ACTION_IDS, label="action_id")
    value = data.draw(_values(sorted(jobs)), label="value")
    user = data.draw(_CLICKERS, label="user")
    channel = data.draw(st.one_of(st.just(CHANNEL), st.text(max_size=12)), label="channel")
    target = value.partition(":")[0]
    owner = jobs.get(target)
    before = all_jobs(deps)

    reply = handle_action(deps, action_id, value, user=user, channel=channel)

    assert isinstance(reply.text, str) and reply.text
    after = all_jobs(deps)
    entitled = owner is not None and action_id in JOB_ACTIONS and user in (owner, ADMIN)
    for job_id in jobs:
        if job_id == target and entitled:
            continue
        assert after[job_id] == before[job_id], (action_id, value, user, job_id)
    if not entitled:
        assert not reply.ok, (action_id, value, user, reply.text)


@CI
@given(data=st.data())
def test_handle_action_never_raises_nor_touches_others_jobs(
    deps: EngineDeps, jobs: dict[str, str], data: st.DataObject
) -> None:
    _check_action(deps, jobs, data)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@LONG
@given(data=st.data())
def test_handle_action_never_raises_nor_touches_others_jobs_long(
    deps: EngineDeps, jobs: dict[str, str], data: st.DataObject
) -> None:
    _check_action(deps, jobs, data)


# -- signed interactivity payloads of random shape ------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(_ANY_CHAR, max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(_ANY_CHAR, max_size=10), inner, max_size=4),
    max_leaves=12,
)
_ACTION = st.fixed_dictionaries(
    {},
    optional={
        "action_id": st.one_of(st.sampled_from(sorted(JOB_ACTIONS)), _JSON),
        "value": _JSON,
        "block_id": _JSON,
        "type": st.one_of(st.just("button"), _JSON),
        "action_ts": _JSON,
    },
)
_PAYLOAD = st.fixed_dictionaries(
    {"type": st.one_of(st.sampled_from(["block_actions", "view_submission", "shortcut",
                                        "message_action", "block_suggestion"]), _JSON)},
    optional={
        "actions": st.one_of(st.lists(st.one_of(_ACTION, _JSON), max_size=3), _JSON),
        "user": st.one_of(
            st.fixed_dictionaries({"id": st.one_of(st.sampled_from([ALICE, BOB, ADMIN]), _JSON)}),
            _JSON,
        ),
        "channel": st.one_of(st.fixed_dictionaries({"id": _JSON}), _JSON),
        "team": _JSON,
        "container": _JSON,
        "response_url": st.one_of(st.just("http://127.0.0.1:9/webhook"), _JSON),
        "trigger_id": _JSON,
        "view": _JSON,
        "callback_id": _JSON,
    },
)


def _check_payload(http: Client, payload: Any) -> None:
    body = "payload=" + quote(json.dumps(payload))
    status, _text = post(http, body, sign(body))
    assert status < 500, (status, payload)


_ROUTABLE = st.fixed_dictionaries(
    {
        "type": st.just("block_actions"),
        "user": st.fixed_dictionaries(
            {"id": st.one_of(st.sampled_from([BOB, MALLORY]), st.text(_ANY_CHAR, max_size=20))}
        ),
        "team": st.just({"id": "T0FAKE"}),
        "actions": st.lists(
            st.fixed_dictionaries(
                {
                    "action_id": st.one_of(st.sampled_from(sorted(JOB_ACTIONS)),
                                           st.text(_ANY_CHAR, max_size=20)),
                    "value": _JSON,
                },
                optional={"block_id": st.text(_ANY_CHAR, max_size=20), "type": _JSON},
            ),
            min_size=1,
            max_size=2,
        ),
    },
    optional={
        "channel": st.one_of(st.none(), st.fixed_dictionaries({"id": st.text(max_size=12)})),
        "container": _JSON,
        "message": _JSON,
        "trigger_id": _JSON,
    },
)


def _check_routable(
    http: Client, slack: SlackFake, deps: EngineDeps, jobs: dict[str, str],
    before: dict[str, dict[str, Any]], payload: dict[str, Any], job_pick: int,
) -> None:
    first = payload["actions"][0]
    if isinstance(first.get("value"), str | type(None)) and job_pick < len(jobs):
        first["value"] = sorted(jobs)[job_pick] + (first.get("value") or "")[:10]
    payload["response_url"] = slack.webhook_url
    answered = len(slack.webhooks)
    body = "payload=" + quote(json.dumps(payload))
    status, _text = post(http, body, sign(body))
    routed = first["action_id"] in JOB_ACTIONS
    # 404: no listener for it; 400: a field Slack always sends as an object/string is not one
    # (bot/http.py refuses such shapes before Bolt sees them)
    assert status in ((200, 400) if routed else (404, 400)), (status, payload)
    if routed and status == 200:  # the listener ran: it must answer, not crash
        wait_until(lambda: len(slack.webhooks) > answered, what=f"an answer to {payload}")
        assert slack.webhooks[-1]["text"]
    # Neither Bob nor a stranger may change Alice's jobs (Bob's own job may change).
    after = all_jobs(deps)
    for job_id, owner in jobs.items():
        if owner == ALICE:
            assert after[job_id] == before[job_id], payload


@pytest.fixture
def jobs_before(deps: EngineDeps, jobs: dict[str, str]) -> dict[str, dict[str, Any]]:
    return all_jobs(deps)


@settings(CI, max_examples=100)  # each example waits for the listener's answer (~50 ms)
@given(payload=_ROUTABLE, job_pick=st.integers(0, 5))
def test_random_routable_button_payloads_answer_and_change_nothing_of_others(
    http: Client, slack: SlackFake, deps: EngineDeps, jobs: dict[str, str],
    jobs_before: dict[str, dict[str, Any]], payload: dict[str, Any], job_pick: int,
) -> None:
    _check_routable(http, slack, deps, jobs, jobs_before, payload, job_pick)

_QUICK_FAIL = settings(max_examples=200, derandomize=True, database=None, deadline=None,
                       phases=[Phase.explicit, Phase.generate], report_multiple_bugs=False,
                       suppress_health_check=[HealthCheck.function_scoped_fixture])



@_QUICK_FAIL
@given(payload=_PAYLOAD)
def test_random_interactivity_payloads_never_get_5xx(
    http: Client, payload: dict[str, Any]
) -> None:
    _check_payload(http, payload)


@_QUICK_FAIL
@given(payload=_JSON)
def test_random_top_level_payload_json_never_gets_5xx(http: Client, payload: Any) -> None:
    _check_payload(http, payload)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@LONG
@given(payload=_PAYLOAD)
def test_random_interactivity_payloads_never_get_5xx_long(
    http: Client, payload: dict[str, Any]
) -> None:
    _check_payload(http, payload)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@LONG
@given(payload=_ROUTABLE, job_pick=st.integers(0, 5))
def test_random_routable_button_payloads_long(
    http: Client, slack: SlackFake, deps: EngineDeps, jobs: dict[str, str],
    jobs_before: dict[str, dict[str, Any]], payload: dict[str, Any], job_pick: int,
) -> None:
    _check_routable(http, slack, deps, jobs, jobs_before, payload, job_pick)
