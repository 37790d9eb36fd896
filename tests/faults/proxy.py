"""A tiny HTTP proxy in front of the simulator that turns chosen requests into timeouts.

``FaultProxy(upstream).hang(method, path_regex, count, forward=True)``: the next ``count``
matching requests are forwarded to the simulator (so the action *happens*, the nastiest
case: an unknown outcome) and then the reply is withheld until ``hang_s`` has passed and the
connection is closed without an answer. The client sees a read timeout.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass

import requests
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response


@dataclass
class _Rule:
    method: str
    regex: str
    count: int
    forward: bool


class _Quiet(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None


class _Abort(Exception):
    pass


class FaultProxy:
    def __init__(self, upstream: str, hang_s: float = 2.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.hang_s = hang_s
        self.rules: list[_Rule] = []
        self.hung = 0
        self._lock = threading.Lock()
        self._session = requests.Session()
        self._session.trust_env = False
        self._http: BaseWSGIServer | None = None

    def hang(self, method: str, regex: str, count: int, *, forward: bool = True) -> None:
        with self._lock:
            self.rules.append(_Rule(method, regex, count, forward))

    def pending(self) -> int:
        with self._lock:
            return sum(r.count for r in self.rules)

    def _take(self, method: str, path: str) -> _Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.method in (method, "*") and re.search(rule.regex, path):
                    rule.count -= 1
                    if rule.count <= 0:
                        self.rules.remove(rule)
                    self.hung += 1
                    return rule
        return None

    def __call__(self, environ, start_response):  # type: ignore[no-untyped-def]
        request = Request(environ)
        rule = self._take(request.method, request.path)
        if rule is not None and not rule.forward:
            time.sleep(self.hang_s)
            raise _Abort()
        url = self.upstream + request.full_path.rstrip("?")
        reply = self._session.request(
            request.method, url, data=request.get_data(), timeout=30,
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
        )
        if rule is not None:
            time.sleep(self.hang_s)  # the client gave up meanwhile
            raise _Abort()
        response = Response(reply.content, status=reply.status_code)
        response.headers["Content-Type"] = reply.headers.get("Content-Type", "application/json")
        return response(environ, start_response)

    def start(self) -> FaultProxy:
        self._http = make_server("127.0.0.1", 0, self, threaded=True, request_handler=_Quiet)
        self._http.daemon_threads = True  # type: ignore[attr-defined]
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self._http is not None
        return f"http://127.0.0.1:{self._http.server_port}"

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
