"""The remote services of ``bench/ack_latency.py``, in their own process: Slack and vast.ai.

Slack and vast.ai are remote in production, so their CPU must not share the measured HTTP
process's GIL. This process runs:

- the Slack Web API fake (``tests/fixtures/slack_fake.py``), which also takes every
  response_url post (``/webhook/...``);
- :class:`SlowSearchProxy` in front of the simulator: every offer search (``/bundles/``) is
  held ``--search-delay`` seconds before it is forwarded (a slow vast search, or one answered
  after a 429 retry);
- a log server: ``GET /log?from=N`` answers ``{"posts": [[path, at], ...], "next": M}``, the
  response_url posts from the N-th on, ``at`` being ``time.monotonic()`` at arrival
  (CLOCK_MONOTONIC is system-wide on Linux, so the bench compares it with its own clock).

Prints one JSON line (``slack_url``, ``webhook_url``, ``proxy_url``, ``log_url``), then serves
until stdin closes.

Usage: ``python bench/_ack_remote.py --upstream SIM_URL --search-delay 2 --token xoxb-...``
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

c.setup()

import requests  # noqa: E402


class SlowSearchProxy:
    """Forwards every request to the simulator; offer searches (``/bundles/``) are held for
    ``delay_s`` first, as a slow vast.ai search (or one answered after a 429 retry) would be."""

    def __init__(self, upstream: str, delay_s: float) -> None:
        from werkzeug.serving import make_server
        from werkzeug.wrappers import Request, Response

        self.upstream = upstream.rstrip("/")
        self.delay_s = delay_s
        session = requests.Session()
        session.trust_env = False

        def wsgi(environ: dict[str, Any], start_response: Any) -> Any:
            request = Request(environ)
            if "/bundles" in request.path and self.delay_s > 0:
                time.sleep(self.delay_s)  # the simulated remote latency, not a wait for state
            upstream_response = session.request(
                request.method, self.upstream + request.full_path.rstrip("?"),
                data=request.get_data(),
                headers={k: v for k, v in request.headers.items()
                         if k.lower() not in {"host", "content-length"}},
                timeout=60,
            )
            response = Response(upstream_response.content, status=upstream_response.status_code)
            for k, v in upstream_response.headers.items():
                if k.lower() not in {"content-length", "transfer-encoding", "connection",
                                     "content-encoding"}:
                    response.headers[k] = v
            return response(environ, start_response)

        self.server = make_server("127.0.0.1", 0, wsgi, threaded=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def log_server(slack: Any) -> Any:
    """``GET /log?from=N``: the fake's response_url posts from the N-th on (path, arrival)."""
    from werkzeug.serving import make_server
    from werkzeug.wrappers import Request, Response

    def wsgi(environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        start = int(request.args.get("from", "0"))
        log = list(slack.webhook_log)
        posts = [[p.path, p.at] for p in log[start:]]
        body = json.dumps({"posts": posts, "next": start + len(posts)})
        return Response(body, mimetype="application/json")(environ, start_response)

    server = make_server("127.0.0.1", 0, wsgi, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="the simulator's URL")
    parser.add_argument("--search-delay", type=float, default=2.0)
    parser.add_argument("--token", required=True, help="the bot token the Slack fake accepts")
    args = parser.parse_args()
    sys.path.insert(0, str(c.REPO))
    from tests.fixtures.slack_fake import SlackFake

    slack = SlackFake(token=args.token).start()
    proxy = SlowSearchProxy(args.upstream, args.search_delay)
    logs = log_server(slack)
    print(json.dumps({
        "slack_url": slack.url, "webhook_url": slack.webhook_url, "proxy_url": proxy.url,
        "log_url": f"http://127.0.0.1:{logs.server_port}/log",
    }), flush=True)
    sys.stdin.read()  # until the bench closes our stdin (or dies)
    logs.shutdown()
    proxy.stop()
    slack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
