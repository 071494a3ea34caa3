"""Small threaded HTTP backends that answer ``200 <name>`` and count their hits."""

from __future__ import annotations

import http.server
import threading
import time


class Backend:
    """Answers every GET and POST with ``200 <name>``, recording when each came.

    ``record_headers``: also keep the headers of every request (``seen_headers``).
    ``single_write``: answer in one write with Nagle off. The default writes headers
    and body separately, and Nagle plus the gateway's delayed ACK then hold an answer
    ~40 ms, which makes a fast request stream too sparse to time detection (bench).
    """

    def __init__(self, name: str, record_headers: bool = False, single_write: bool = False):
        self.name = name
        self.lock = threading.Lock()
        self.hits = 0
        self.hit_times: list = []  # time.monotonic() of every request
        self.seen_headers: list = []  # [(name lower-case, value), ...] per request, if recorded
        backend = self
        body = name.encode()
        head = {"content-type": "text/plain", "content-length": str(len(body)), "x-backend": name}
        whole = b"HTTP/1.1 200 OK\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in head.items()) + b"\r\n" + body

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = single_write

            def _answer(self):
                with backend.lock:
                    backend.hits += 1
                    backend.hit_times.append(time.monotonic())
                    if record_headers:
                        backend.seen_headers.append([(k.lower(), v) for k, v in self.headers.items()])
                if single_write:
                    self.wfile.write(whole)
                    return
                self.send_response(200)
                for k, v in head.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            do_GET = _answer
            do_POST = _answer

            def log_message(self, *a):  # silence
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name=f"backend-{name}", daemon=True)
        self.thread.start()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def last_hit(self) -> float | None:
        with self.lock:
            return self.hit_times[-1] if self.hit_times else None

    def reset(self):
        with self.lock:
            self.hits = 0
            self.hit_times.clear()
            self.seen_headers.clear()

    def stop(self):
        if self.server is None:
            return
        self.server.shutdown()
        self.server.server_close()
        self.server = None
