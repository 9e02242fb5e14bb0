"""A misbehaving S3 endpoint on 127.0.0.1 for trust tests: moto's real S3 app behind a fault layer.

S3-compatible stores differ: some accept conditional headers and ignore them, some serve byte
ranges wrongly, and any of them can apply a write and then lose the response. `FaultyS3` serves
moto's own WSGI app (the same in-process backend as the plain moto server, so both endpoints see
the same buckets) through a WSGI middleware that injects exactly those faults, switched per test.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable

from werkzeug.serving import BaseWSGIServer, make_server

#: (method, path) -> whether a fault applies to this request.
Match = Callable[[str, str], bool]


@dataclass
class Faults:
    """What the endpoint does wrong; every field is off by default and may be changed mid-test."""

    #: drop If-Match / If-None-Match before the store sees them (the store "accepts and ignores" them).
    ignore_conditional_headers: bool = False
    #: apply the request, then answer 500 instead of the real response, this many times.
    lose_response_after_apply: int = 0
    #: which requests lose their response (default: any PUT).
    lose_response_match: Match = lambda method, path: method == "PUT"
    #: serve ranged GETs from the wrong offset (start + this many bytes), like a broken gateway.
    shift_ranges_by: int = 0
    #: every request seen, as (method, path, selected headers).
    log: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def requests(self, method: str | None = None, path_contains: str = "") -> list[tuple[str, str, dict[str, str]]]:
        return [r for r in self.log if (method is None or r[0] == method) and path_contains in r[1]]


_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class _FaultLayer:
    def __init__(self, app: Callable, faults: Faults, lock: threading.Lock) -> None:
        self.app, self.faults, self.lock = app, faults, lock

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        faults = self.faults
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        seen = {k: environ[k] for k in ("HTTP_IF_MATCH", "HTTP_IF_NONE_MATCH", "HTTP_RANGE") if k in environ}
        faults.log.append((method, path, seen))
        if faults.ignore_conditional_headers:
            environ.pop("HTTP_IF_MATCH", None)
            environ.pop("HTTP_IF_NONE_MATCH", None)
        if faults.shift_ranges_by and "HTTP_RANGE" in environ:
            found = _RANGE.fullmatch(environ["HTTP_RANGE"].strip())
            if found:
                start = int(found.group(1)) + faults.shift_ranges_by
                stop = int(found.group(2)) + faults.shift_ranges_by if found.group(2) else ""
                environ["HTTP_RANGE"] = f"bytes={start}-{stop}"
        lose = False
        with self.lock:
            if faults.lose_response_after_apply > 0 and faults.lose_response_match(method, path):
                faults.lose_response_after_apply -= 1
                lose = True
        if not lose:
            return self.app(environ, start_response)
        captured: list = []
        body = b"".join(self.app(environ, lambda status, headers, exc_info=None: captured.append(status)))
        del body  # the write happened; its answer is what gets lost
        start_response("500 Internal Server Error", [("Content-Type", "application/xml")])
        return [b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InternalError</Code>"
                b"<Message>injected: response lost after the request was applied</Message></Error>"]


class FaultyS3:
    """An S3 endpoint on 127.0.0.1 sharing moto's backend, with `faults` applied; stop() it after use."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

        self.faults = Faults()
        app = _FaultLayer(DomainDispatcherApplication(create_backend_app), self.faults, threading.Lock())
        self._server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True,
                                                   request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def storage_options(self, base: dict) -> dict:
        """`base` s3fs options re-pointed at this endpoint."""
        return {**base, "client_kwargs": {**base.get("client_kwargs", {}), "endpoint_url": self.endpoint}}

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
