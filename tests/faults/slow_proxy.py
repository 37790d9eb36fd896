"""A recording HTTP proxy that can make chosen requests *slow* (not failed).

``SlowProxy(upstream).delay(method, path_regex, seconds, count)``: the next ``count`` matching
requests wait ``seconds`` (real time) before they are forwarded; the upstream's answer is then
returned as usual. ``before=False`` forwards first and delays the answer instead. Every request
is recorded as ``(method, path)`` in :attr:`seen`, so a test can count uploads or creates.
Built on :class:`tests.faults.proxy.FaultProxy` (same server, same forwarding).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass

from werkzeug.wrappers import Request, Response

from tests.faults.proxy import FaultProxy

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-encoding", "content-length"}
)


@dataclass
class _Delay:
    method: str
    regex: str
    seconds: float
    count: int
    before: bool


class SlowProxy(FaultProxy):
    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.delays: list[_Delay] = []
        self.seen: list[tuple[str, str]] = []
        self._seen_lock = threading.Lock()

    def delay(
        self, method: str, regex: str, seconds: float, count: int = 1, *, before: bool = True
    ) -> None:
        with self._seen_lock:
            self.delays.append(_Delay(method, regex, seconds, count, before))

    def count(self, method: str, regex: str) -> int:
        """How many requests so far matched ``method`` and ``regex`` (``re.search``)."""
        with self._seen_lock:
            return sum(1 for m, p in self.seen if m == method and re.search(regex, p))

    def _take_delay(self, method: str, path: str) -> _Delay | None:
        with self._seen_lock:
            self.seen.append((method, path))
            for rule in self.delays:
                if rule.method in (method, "*") and re.search(rule.regex, path):
                    rule.count -= 1
                    if rule.count <= 0:
                        self.delays.remove(rule)
                    return rule
        return None

    def __call__(self, environ, start_response):  # type: ignore[no-untyped-def]
        request = Request(environ)
        rule = self._take_delay(request.method, request.path)
        if rule is not None and rule.before:
            time.sleep(rule.seconds)  # the fault itself: a slow server
        url = self.upstream + request.full_path.rstrip("?")
        reply = self._session.request(
            request.method, url, data=request.get_data(), timeout=120,
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
        )
        if rule is not None and not rule.before:
            time.sleep(rule.seconds)  # the fault itself: a slow answer
        response = Response(reply.content, status=reply.status_code)
        for key, value in reply.headers.items():
            # every header (x-amz-meta-*, ETag, Retry-After…) but the hop-by-hop ones
            if key.lower() not in _HOP_BY_HOP:
                response.headers[key] = value
        return response(environ, start_response)
