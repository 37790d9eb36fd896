"""The job card's Cancel button asks before it sends the click (Slack confirm dialog)."""

from __future__ import annotations

from typing import Any

import pytest

from gpubot.render.blocks import ACTION_CANCEL, cancel_confirm
from gpubot.render.text import FINISHED_STATES, PHASE_LABELS, card_blocks
from gpubot.render.views import JobView
from tests.fixtures.slack_fake import block_kit_errors


def _view(state: str, job_id: str = "j-0123abcd") -> JobView:
    return JobView(job_id=job_id, template="train", kind="batch", state=state,
                   requester="UALICE1")


def _buttons(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [el for b in blocks if b["type"] == "actions" for el in b["elements"]]


@pytest.mark.parametrize("state", sorted(set(PHASE_LABELS) - FINISHED_STATES))
def test_a_live_cards_cancel_button_has_the_cancel_confirm_dialog(state: str) -> None:
    blocks = card_blocks(_view(state))
    [cancel] = [b for b in _buttons(blocks) if b["action_id"] == ACTION_CANCEL]
    assert cancel["confirm"] == cancel_confirm("j-0123abcd")
    assert cancel["style"] == "danger" and cancel["value"] == "j-0123abcd"
    assert "j-0123abcd" in cancel["confirm"]["title"]["text"]
    assert block_kit_errors(blocks) == []


def test_a_very_long_job_id_keeps_the_dialog_within_slacks_limits() -> None:
    blocks = card_blocks(_view("running", job_id="j-" + "x" * 300))
    assert block_kit_errors(blocks) == []
    [cancel] = _buttons(blocks)
    assert len(cancel["confirm"]["title"]["text"]) <= 100


@pytest.mark.parametrize("state", sorted(FINISHED_STATES))
def test_a_finished_card_has_no_button(state: str) -> None:
    assert _buttons(card_blocks(_view(state))) == []
