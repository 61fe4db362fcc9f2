"""A fault-injecting HTTP proxy on 127.0.0.1 in front of the moto S3 server (test-only).

Forwards every request to ``upstream`` and, for a seeded share of them, answers 503 SlowDown or
500 InternalError, sleeps before answering, or drops the connection without a response -- the
transient failures real object stores produce. Bounded: at most ``max_faults`` faults in all and
never more than ``max_consecutive`` in a row for one (method, path), so clients with retries must
succeed. ``permanent`` lists path substrings that always get ``permanent_status`` (a lost or
forbidden object). Runs in daemon threads; ``stop()`` (or the context manager) shuts it down.
"""
from __future__ import annotations

import http.client
import random
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

__all__ = ["FaultyS3Proxy"]

_ERROR_XML = ("<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>injected by the chaos "
              "proxy</Message><RequestId>chaos</RequestId></Error>")
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class FaultyS3Proxy:
    def __init__(self, upstream: str, *, seed: int = 0, fault_rate: float = 0.2, delay_rate: float = 0.1,
                 max_delay_s: float = 0.3, max_faults: int = 200, max_consecutive: int = 2,
                 permanent: tuple[str, ...] = (), permanent_status: int = 403):
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname, parts.port)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.fault_rate, self.delay_rate, self.max_delay_s = fault_rate, delay_rate, max_delay_s
        self.max_faults, self.max_consecutive = max_faults, max_consecutive
        self.permanent, self.permanent_status = permanent, permanent_status
        self.counts: Counter[str] = Counter()
        self._streak: Counter[tuple[str, str]] = Counter()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self):
                body = self._body()
                action = proxy._decide(self.command, self.path)
                proxy.counts["requests"] += 1
                if action == "drop":
                    self.close_connection = True
                    try:
                        self.connection.shutdown(2)
                    except OSError:
                        pass
                    return
                if action in ("503", "500", "permanent"):
                    status = proxy.permanent_status if action == "permanent" else int(action)
                    code = {503: "SlowDown", 500: "InternalError", 403: "AccessDenied"}.get(status, "Error")
                    data = b"" if self.command == "HEAD" else _ERROR_XML.format(code=code).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if action == "delay":
                    time.sleep(proxy._rng.uniform(0.05, proxy.max_delay_s))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                upstream = http.client.HTTPConnection(*proxy._upstream, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    self.send_response(response.status, response.reason)
                    for key, value in response.getheaders():
                        if key.lower() not in _HOP and key.lower() != "content-length":
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="chaos-s3-proxy", daemon=True)

    def _decide(self, method: str, path: str) -> str:
        with self._lock:
            if any(p in path for p in self.permanent):
                self.counts["permanent"] += 1
                return "permanent"
            key = (method, path)
            roll = self._rng.random()
            if (roll < self.fault_rate and self.counts["faults"] < self.max_faults
                    and self._streak[key] < self.max_consecutive):
                self._streak[key] += 1
                self.counts["faults"] += 1
                action = self._rng.choice(["503", "500", "drop"])
                self.counts[action] += 1
                return action
            self._streak[key] = 0
            if roll < self.fault_rate + self.delay_rate:
                self.counts["delay"] += 1
                return "delay"
            return "pass"

    def start(self) -> FaultyS3Proxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultyS3Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
