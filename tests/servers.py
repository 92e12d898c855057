"""Real servers for integration tests, started on 127.0.0.1 and stopped by the test that started them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

LOOPBACK = "127.0.0.1"
TEST_S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-access-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-access-key",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers: up
        except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
            last = exc
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not come up in {timeout_s}s: {last}")


class Server:
    """A subprocess in its own process group; ``stop`` ends the group (and nothing else)."""

    def __init__(self, args: list[str], url: str, log_path: Path, env: dict | None = None):
        self.url = url
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._log.close()


def start_moto(log_dir: Path) -> Server:
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    server = Server(
        [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)], url, log_dir / "moto.log", TEST_S3_ENV
    )
    wait_http(url, 60, server.proc)
    return server


def start_mlflow(root: Path) -> Server:
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    args = [
        exe, "server", "--host", LOOPBACK, "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    server = Server(args, url, root / "mlflow-server.log")
    wait_http(f"{url}/health", 120, server.proc)
    return server
