"""An HTTP proxy in front of an S3 endpoint that breaks the requests a test chooses.

    with LocalS3() as s3, FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault("slowdown", method="PUT", path="/_staging/", times=2))
        spec = ... storage.endpoint_url = proxy.endpoint_url ...

The pipeline talks to the proxy as to any S3 endpoint (its workers too: it listens on a real
port); every request it does not break is forwarded unchanged to the endpoint behind it. Faults:

- `slowdown`: 503 SlowDown, the throttling answer of S3 (nothing reaches the endpoint)
- `error`: 500 InternalError (nothing reaches the endpoint)
- `stall`: no answer for `stall_s` seconds, then the connection is closed (client time-outs)
- `cut`: the connection is reset after reading half of the request body (a dropped upload)
- `lost_response`: the request is forwarded, so it takes effect, but the connection is reset
  before the answer (the client cannot know that it succeeded)

A fault applies to requests whose method and path (with the query) match, skipping the first
`after` of them, then `times` of them (None: all the rest). `proxy.log` records every request
and what was done to it.
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import urlsplit

from .s3server import free_port

Action = Literal["slowdown", "error", "stall", "cut", "lost_response"]
_ERRORS = {
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "error": (500, "InternalError", "We encountered an internal error. Please try again."),
}
# per-connection headers, not forwarded (the proxy answers `Expect: 100-continue` itself)
_HOP_BY_HOP = {
    "connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade", "expect"
}


@dataclass
class Fault:
    action: Action
    method: str | None = None  # e.g. "PUT"; None: any
    path: str | None = None  # regular expression searched in "/bucket/key?query"; None: any
    copy: bool | None = None  # True: only server-side copies (PUT with x-amz-copy-source); False: no copies
    after: int = 0  # let this many matching requests through first
    times: int | None = 1  # then break this many (None: every later one)
    stall_s: float = 30.0
    seen: int = field(default=0, init=False)  # matching requests so far

    def matches(self, method: str, path: str, is_copy: bool) -> bool:
        return (
            (self.method is None or self.method == method)
            and (self.path is None or re.search(self.path, path) is not None)
            and (self.copy is None or self.copy == is_copy)
        )


@dataclass
class LoggedRequest:
    method: str
    path: str
    action: str  # "forwarded" or the fault's action


class FaultProxy:
    """A threaded HTTP proxy (context manager) that injects `Fault`s; see the module docstring."""

    def __init__(self, upstream_url: str, host: str = "127.0.0.1", port: int | None = None):
        up = urlsplit(upstream_url)
        self.upstream = (up.hostname, up.port or 80)
        self.host, self.port = host, port or free_port(host)
        self.faults: list[Fault] = []
        self.log: list[LoggedRequest] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def add(self, *faults: Fault) -> FaultProxy:
        with self._lock:
            self.faults.extend(faults)
        return self

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def injected(self, action: str | None = None) -> list[LoggedRequest]:
        """The requests that were broken (by one action, or by any)."""
        with self._lock:
            return [r for r in self.log if r.action != "forwarded" and (action is None or r.action == action)]

    def _decide(self, method: str, path: str, is_copy: bool) -> Fault | None:
        with self._lock:
            chosen = None
            for fault in self.faults:
                if not fault.matches(method, path, is_copy):
                    continue
                fault.seen += 1
                index = fault.seen - 1 - fault.after
                if chosen is None and index >= 0 and (fault.times is None or index < fault.times):
                    chosen = fault
            self.log.append(LoggedRequest(method, path, chosen.action if chosen else "forwarded"))
            return chosen

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect
    owner: FaultProxy

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet
        pass

    def _handle(self) -> None:
        is_copy = "x-amz-copy-source" in {k.lower() for k in self.headers}
        fault = self.owner._decide(self.command, self.path, is_copy)
        if fault is not None and fault.action == "cut":
            self._read_body(partial=True)
            self._reset()
            return
        body = self._read_body()
        if fault is not None and fault.action in _ERRORS:
            self._send_error_xml(*_ERRORS[fault.action])
            return
        if fault is not None and fault.action == "stall":
            time.sleep(fault.stall_s)
            self._reset()
            return
        status, reason, headers, payload = self._forward(body)
        if fault is not None and fault.action == "lost_response":
            self._reset()
            return
        self.send_response(status, reason)
        for key, value in headers:
            if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                self.send_header(key, value)
        length = dict((k.lower(), v) for k, v in headers).get("content-length") if self.command == "HEAD" else None
        self.send_header("Content-Length", length or str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    def _read_body(self, partial: bool = False) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
                if partial:
                    break
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length // 2 if partial else length)

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.owner.upstream, timeout=120)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body or None, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            return response.status, response.reason, response.getheaders(), payload
        finally:
            conn.close()

    def _send_error_xml(self, status: int, code: str, message: str) -> None:
        payload = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<Resource>{self.path}</Resource><RequestId>fault-proxy</RequestId></Error>"
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer has no body (a client would read it as the next answer)
            self.wfile.write(payload)

    def _reset(self) -> None:
        """Drop the connection with a TCP reset, as a failing network or server does."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass
