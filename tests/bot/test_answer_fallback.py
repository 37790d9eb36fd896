"""An answer whose response_url Slack rejects (expired, used) still reaches the user.

The response_url here is a server that answers every post like Slack does for an expired
URL (HTTP 404, body ``expired_url``). The answer must then arrive by ``chat.postEphemeral`` to
the user in the channel, or, when the bot cannot post there, in a DM.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from werkzeug.serving import make_server
from werkzeug.test import Client
from werkzeug.wrappers import Request, Response

from bot.answers import Answerer, command_request
from gpubot.deps import EngineDeps
from tests.bot.conftest import ALICE, CHANNEL, FORM, command_body, sign, wait_until
from tests.fixtures.slack_fake import SlackFake


class ExpiredUrls:
    """Answers every POST with 404 ``expired_url`` and counts them."""

    def __init__(self) -> None:
        self.posts = 0

        def wsgi(environ: dict[str, object], start_response: object) -> object:
            Request(environ).get_data()  # type: ignore[arg-type]
            self.posts += 1
            return Response("expired_url", status=404)(environ, start_response)  # type: ignore[arg-type]

        self.server = make_server("127.0.0.1", 0, wsgi, threaded=True)
        import threading

        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/commands/T0FAKE/1/expired"


@pytest.fixture
def expired() -> Iterator[ExpiredUrls]:
    urls = ExpiredUrls()
    try:
        yield urls
    finally:
        urls.server.shutdown()
        urls.server.server_close()


def test_a_rejected_response_url_falls_back_to_an_ephemeral_message(
    http: Client, slack: SlackFake, expired: ExpiredUrls
) -> None:
    body = command_body("help", response_url=expired.url)
    response = http.post("/slack/events", data=body, headers={**FORM, **sign(body)})
    assert response.status_code == 200

    wait_until(lambda: bool(slack.calls_to("chat.postEphemeral")), what="the fallback")
    [call] = slack.calls_to("chat.postEphemeral")
    assert call.params["channel"] == CHANNEL and call.params["user"] == ALICE
    assert "/gpu" in call.params["text"] and "Working on it" not in call.params["text"]
    assert expired.posts >= 1


def test_when_the_bot_cannot_post_in_the_channel_the_answer_goes_to_a_dm(
    deps: EngineDeps, slack: SlackFake, expired: ExpiredUrls
) -> None:
    from bot.app import make_web_client

    slack.strict(channels={"CELSEWHERE"})  # CHANNEL is unknown to Slack now
    answerer = Answerer(deps, make_web_client(deps.settings))
    command = {
        "text": "help", "user_id": ALICE, "channel_id": CHANNEL, "team_id": "T0FAKE",
        "trigger_id": "1.2.3", "response_url": expired.url,
    }

    where = answerer.answer_command(**command_request(command))

    assert where == "dm"
    assert slack.dms[ALICE] == f"D{ALICE}"
    [post] = slack.calls_to("chat.postMessage")
    assert post.params["channel"] == f"D{ALICE}" and "/gpu" in post.params["text"]


def test_an_accepted_response_url_needs_no_fallback(
    deps: EngineDeps, slack: SlackFake
) -> None:
    from bot.app import make_web_client

    answerer = Answerer(deps, make_web_client(deps.settings))
    url = slack.webhook_url.split("/webhook/")[0] + "/webhook/ok"
    command = {"text": "help", "user_id": ALICE, "channel_id": CHANNEL, "team_id": "T0FAKE",
               "trigger_id": "4.5.6", "response_url": url}

    assert answerer.answer_command(**command_request(command)) == "response_url"
    assert not slack.calls_to("chat.postEphemeral") and not slack.calls_to("chat.postMessage")
