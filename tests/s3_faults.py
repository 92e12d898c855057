"""A fault-injecting HTTP proxy in front of the moto S3 server, for the S3 fault tests.

Real S3 under load answers ``503 SlowDown`` and drops connections; a pipeline that only ever met
a perfect local server would find out in production. :class:`FaultProxy` listens on 127.0.0.1,
forwards every request to the S3 server, and on a fraction of requests injects one fault:

* ``slowdown``: a real S3 ``503 SlowDown`` XML error (the request never reaches the server);
* ``reset_request``: the connection is reset (``SO_LINGER`` 0: an RST, not a clean close) after
  the request was read and before anything was forwarded;
* ``reset_response``: the request IS forwarded and executed, then the connection is reset partway
  through the response (inside the headers when there is no body, else inside the body). The
  client cannot tell whether its request happened: this is the fault that breaks non-idempotent
  commits and readers that do not resume a body.

Which requests fail is decided from a seed, by request identity (method, key, query without
signatures or upload ids, and how many times that identity was seen before), not by arrival
order, so a run with concurrent clients meets the same faults whatever the thread interleaving
(object names that embed a time, like Ray Train's run folders, change them from run to run).
At most ``max_consecutive`` faults hit one identity in a row: a client with more attempts than
that always gets through, so the test is not flaky, while one left at a stock budget of 3
attempts (pyarrow's default) can fail. :attr:`FaultProxy.injected` counts what was injected, per
fault and per client (boto3, pyarrow's AWS SDK, ffmpeg), so a test can prove the faults happened.

Upstream behaviour the proxy emulates: a ``CompleteMultipartUpload`` retried after its first
attempt completed gets the first attempt's answer again (AWS S3 keeps a completed upload id
answerable for a while, see minio/minio#13318 and adobe/S3Mock#2586; moto forgets it at once and
would answer ``NoSuchUpload``).
"""

from __future__ import annotations

import collections
import hashlib
import http.client
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from pyratok.workflow.services import LOOPBACK

FAULTS = ("slowdown", "reset_request", "reset_response")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "expect"}
SLOWDOWN_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    "<Message>Please reduce your request rate.</Message><RequestId>{rid}</RequestId>"
    "<HostId>{host}</HostId></Error>"
)
"""S3's answer, as long as S3's (~250 bytes: a 76-character HostId), which matters to readers
that receive a small ranged read into a buffer of exactly the range's size."""
CHUNK = 256 * 1024
RESET_GRACE_S = 0.05


@dataclass
class FaultPlan:
    """What to inject: ``fraction`` of requests fail, with the kinds' relative ``weights``."""

    seed: int = 0
    fraction: float = 0.15
    weights: dict[str, float] = field(default_factory=lambda: {"slowdown": 1.0, "reset_request": 1.0, "reset_response": 1.0})
    max_consecutive: int = 3
    """Most faults in a row for one request identity (keep it below pyratok's ``storage.retries.max_attempts``)."""


def client_of(user_agent: str) -> str:
    """Which of our S3 clients sent a request, from its User-Agent."""
    ua = user_agent.lower()
    if "boto" in ua:
        return "boto3"
    if "aws-sdk-cpp" in ua or "arrow" in ua:
        return "pyarrow"
    if "lavf" in ua:
        return "ffmpeg"
    return "other"


VOLATILE_PARAMS = ("uploadId", "AWSAccessKeyId", "Signature", "Expires", "continuation-token")


def request_identity(method: str, target: str) -> str:
    """method + key + the query (sub-resource, prefix, part...) without bucket, signatures or ids.

    The bucket is left out because tests make a fresh, randomly named one: the same job then
    meets the same faults in every test run.
    """
    parts = urlsplit(target)
    path = "/" + parts.path.lstrip("/").partition("/")[2]
    query = sorted(
        f"{k}={v}"
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if not k.lower().startswith("x-amz-") and k not in VOLATILE_PARAMS
    )
    return f"{method} {path}?{'&'.join(query)}"


class FaultProxy:
    """A threaded proxy on 127.0.0.1 that forwards to ``upstream`` (an ``http://host:port`` URL)."""

    def __init__(self, upstream: str, plan: FaultPlan | None = None):
        parsed = urlsplit(upstream)
        self.upstream = (parsed.hostname, parsed.port or 80)
        self.plan = plan or FaultPlan()
        self.enabled = True
        self.injected: collections.Counter = collections.Counter()
        """(fault, client) -> count; ``faults()`` sums it per fault."""
        self.requests: collections.Counter = collections.Counter()
        """client -> requests seen."""
        self._seen: collections.Counter = collections.Counter()
        self._streak: collections.Counter = collections.Counter()
        self._completed: dict[str, tuple[int, str, list, bytes]] = {}
        self._lock = threading.Lock()
        self._server = _Server((LOOPBACK, 0), _Handler)
        self._server.daemon_threads = True
        self._server.proxy = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- bookkeeping -------------------------------------------------------
    def faults(self) -> dict[str, int]:
        out = dict.fromkeys(FAULTS, 0)
        for (fault, _client), count in self.injected.items():
            out[fault] += count
        return out

    def by_client(self) -> dict[str, int]:
        out: dict[str, int] = collections.Counter()
        for (_fault, client), count in self.injected.items():
            out[client] += count
        return dict(out)

    def reset_counts(self) -> None:
        with self._lock:
            self.injected.clear()
            self.requests.clear()

    def decide(self, method: str, target: str, client: str) -> tuple[str | None, float]:
        """(fault or None, a draw in [0, 1) for where to cut a response), from the seed and the identity."""
        identity = request_identity(method, target)
        with self._lock:
            self.requests[client] += 1
            nth = self._seen[identity]
            self._seen[identity] += 1
            digest = hashlib.sha256(f"{self.plan.seed}|{identity}|{nth}".encode()).digest()
            draw, kind_draw, cut = (int.from_bytes(digest[i : i + 8], "big") / 2**64 for i in (0, 8, 16))
            if not self.enabled or draw >= self.plan.fraction or self._streak[identity] >= self.plan.max_consecutive:
                self._streak[identity] = 0
                return None, cut
            self._streak[identity] += 1
            total = sum(self.plan.weights.get(k, 0.0) for k in FAULTS)
            acc, fault = 0.0, FAULTS[-1]
            for kind in FAULTS:
                acc += self.plan.weights.get(kind, 0.0) / total
                if kind_draw < acc:
                    fault = kind
                    break
            self.injected[(fault, client)] += 1
            return fault, cut


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """A client that hangs up or resets (they do, when they give up on a response) is no error."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 120  # an idle keep-alive connection ends eventually

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass

    def do_GET(self):
        self._proxy()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    # -- one request -------------------------------------------------------
    def _proxy(self) -> None:
        proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        body = self._read_body()
        fault, cut = proxy.decide(self.command, self.path, client_of(self.headers.get("User-Agent", "")))
        if fault == "slowdown":
            return self._slowdown()
        if fault == "reset_request":
            return self._reset()
        completes = self.command == "POST" and "uploadId=" in self.path
        if completes and self.path in proxy._completed:
            status, reason, headers, payload = proxy._completed[self.path]
            return self._send(status, reason, headers, iter([payload]), len(payload), fault, cut)
        upstream = http.client.HTTPConnection(*proxy.upstream, timeout=300)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            upstream.request(self.command, self.path, body=body, headers=headers)
            resp = upstream.getresponse()
            out_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
            if self.command == "HEAD" or resp.status in (204, 304):
                length, chunks = 0, iter(())
            elif resp.getheader("Content-Length") is not None and resp.getheader("Transfer-Encoding") is None:
                length, chunks = int(resp.getheader("Content-Length")), iter(lambda: resp.read(CHUNK), b"")
            else:  # chunked / close-delimited: re-frame with a length
                data = resp.read()
                length, chunks = len(data), iter([data])
                out_headers = [(k, v) for k, v in out_headers if k.lower() != "content-length"]
                out_headers.append(("Content-Length", str(length)))
            if completes and resp.status == 200:
                data = b"".join(chunks)
                with proxy._lock:
                    proxy._completed[self.path] = (resp.status, resp.reason, out_headers, data)
                chunks = iter([data])
            self._send(resp.status, resp.reason, out_headers, chunks, length, fault, cut)
        finally:
            upstream.close()

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            body = b"".join(parts)
            del self.headers["Transfer-Encoding"]
            self.headers["Content-Length"] = str(len(body))
            return body
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def _send(self, status, reason, headers, chunks, length, fault, cut) -> None:
        head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        head_bytes = head.encode("latin-1")
        if fault != "reset_response":
            try:
                self.wfile.write(head_bytes)
                for chunk in chunks:
                    self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):  # ffmpeg hangs up once it has the bytes it wanted
                self.close_connection = True
            return
        # Reset partway: inside the body when there is one, else inside the status line + headers.
        stop_at = len(head_bytes) + int(cut * length) if length else max(1, int(cut * len(head_bytes)))
        sent = 0
        try:
            for piece in (head_bytes, *chunks):
                take = piece[: max(0, stop_at - sent)]
                if take:
                    self.wfile.write(take)
                sent += len(take)
                if sent >= stop_at:
                    break
            # let what was sent arrive before the RST: Linux drops unread received bytes on RST,
            # which would turn a break inside the body into one inside the headers at random
            self.wfile.flush()
            time.sleep(RESET_GRACE_S)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self._reset()

    def _slowdown(self) -> None:
        digest = hashlib.sha256(self.path.encode()).hexdigest()
        body = SLOWDOWN_BODY.format(rid=digest[:16].upper(), host=(digest * 2)[:76]).encode()
        body = b"" if self.command == "HEAD" else body
        self.send_response(503, "Slow Down")
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)) if body else "0")
        self.end_headers()
        self.wfile.write(body)

    def _reset(self) -> None:
        """Drop the connection with an RST now (SO_LINGER 0), not the clean FIN of a normal close."""
        self.close_connection = True
        sock = self.connection
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            socket.close(sock.detach())  # the handler's file objects keep the socket alive otherwise
        except OSError:
            pass
