"""Local services on 127.0.0.1: a Ray head, an MLflow tracking server, an S3 server (moto).

Each runs in its own process group so stopping it stops exactly it and its
children — never ``ray stop``, which would end every Ray on the machine. Used
by ``pyratok dev up|down`` and by the integration tests.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def venv_bin() -> Path:
    """The folder of this interpreter's console scripts (ray, mlflow)."""
    return Path(sys.executable).parent


def wait_http(url: str, timeout_s: float, *, proc: subprocess.Popen | None = None, headers: dict | None = None) -> None:
    """Poll until ``url`` answers (any HTTP status counts as up)."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=3):
                return
        except urllib.error.HTTPError:
            return
        except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
            last = exc
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not come up within {timeout_s:.0f}s ({last})")


@dataclass
class Service:
    """A started service: what to call it, where it answers, how to stop it."""

    name: str
    url: str
    pid: int
    log: str
    env: dict[str, str] = field(default_factory=dict)
    """Environment a client needs (values may be secrets: print names, not values, unless asked)."""
    terminate_group: bool = True
    """SIGTERM the whole process group (mlflow's server workers), or only the leader, which then
    stops its own children (``ray start --block`` drains; a group SIGTERM races that)."""

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        try:  # a zombie (exited, not yet reaped by its parent) is not alive
            return Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return True

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM (the group or the leader, see ``terminate_group``), wait for the whole group
        to be gone, then SIGKILL whatever is left of it."""
        try:
            if self.terminate_group:
                os.killpg(self.pid, signal.SIGTERM)
            else:
                os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if self._wait_group_gone(timeout_s):
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self._wait_group_gone(10)

    def _wait_group_gone(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            _reap(self.pid)
            try:
                os.killpg(self.pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.1)
        return False

    def to_dict(self) -> dict:
        return asdict(self)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _spawn(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        path = f"{venv_bin()}{os.pathsep}{os.environ.get('PATH', '')}"
        return subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PATH": path, **(env or {})},
            start_new_session=True,  # own process group: stop() ends exactly this service
        )


def start_s3(root: Path, *, port: int | None = None, access_key: str = "dev-access-key", secret_key: str | None = None) -> Service:
    """moto's S3 server. Any credentials work against it; clients get a generated pair."""
    port = port or free_port()
    url = f"http://{LOOPBACK}:{port}"
    proc = _spawn([sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)], root / "s3.log")
    try:
        wait_http(url, 60, proc=proc)
    except Exception:
        Service("s3", url, proc.pid, str(root / "s3.log")).stop()
        raise
    env = {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key or secrets.token_hex(16),
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    return Service("s3", url, proc.pid, str(root / "s3.log"), env)


def start_mlflow(root: Path, *, port: int | None = None, artifacts: str | None = None, env: dict | None = None) -> Service:
    """``mlflow server`` with a sqlite backend and proxied artifacts (a folder, or s3:// with ``env``)."""
    port = port or free_port()
    url = f"http://{LOOPBACK}:{port}"
    exe = shutil.which("mlflow", path=str(venv_bin())) or "mlflow"
    root.mkdir(parents=True, exist_ok=True)
    args = [
        exe, "server", "--host", LOOPBACK, "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", artifacts or str(root / "mlflow-artifacts"),
    ]  # fmt: skip
    server_env = dict(env or {})
    if "AWS_ENDPOINT_URL" in server_env:
        server_env["MLFLOW_S3_ENDPOINT_URL"] = server_env["AWS_ENDPOINT_URL"]
    proc = _spawn(args, root / "mlflow.log", server_env)
    try:
        wait_http(f"{url}/health", 180, proc=proc)
    except Exception:
        Service("mlflow", url, proc.pid, str(root / "mlflow.log")).stop()
        raise
    return Service("mlflow", url, proc.pid, str(root / "mlflow.log"), {"MLFLOW_TRACKING_URI": url})


def start_ray_head(
    root: Path, *, num_cpus: int | None = None, auth: bool = True, env: dict | None = None
) -> Service:
    """``ray start --head --block`` on 127.0.0.1 with its own temp dir; token auth on by default.

    The token is generated into ``root/ray-token`` (mode 600) and handed to
    clients through ``RAY_AUTH_TOKEN_PATH``, never as a value.
    """
    root.mkdir(parents=True, exist_ok=True)
    gcs_port, dash_port, client_port, agent_port = free_port(), free_port(), free_port(), free_port()
    ray_env = dict(env or {})
    client_env: dict[str, str] = {}
    if auth:
        token = root / "ray-token"
        if not token.exists():
            token.write_text(secrets.token_hex(32))
            token.chmod(0o600)
        client_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    else:
        client_env = {"RAY_AUTH_MODE": "disabled"}
    ray_env.update(client_env)
    exe = shutil.which("ray", path=str(venv_bin())) or "ray"
    # Ray's unix sockets must stay under ~107 chars: keep its temp dir short.
    temp_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"pyratok-ray-{gcs_port}"
    args = [
        exe, "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address", LOOPBACK, "--port", str(gcs_port),
        "--dashboard-host", LOOPBACK, "--dashboard-port", str(dash_port),
        "--ray-client-server-port", str(client_port), "--temp-dir", str(temp_dir),
        "--dashboard-agent-listen-port", str(agent_port),
    ]  # fmt: skip
    if num_cpus is not None:
        args += ["--num-cpus", str(num_cpus)]
    proc = _spawn(args, root / "ray.log", ray_env)
    url = f"http://{LOOPBACK}:{dash_port}"
    headers = {"Authorization": f"Bearer {(root / 'ray-token').read_text()}"} if auth else None
    try:
        wait_http(f"{url}/api/version", 120, proc=proc, headers=headers)
        # Jobs are handed to the node's dashboard agent, which starts after the dashboard.
        wait_http(f"http://{LOOPBACK}:{agent_port}/api/local_raylet_healthz", 180, proc=proc, headers=headers)
    except Exception:
        Service("ray", url, proc.pid, str(root / "ray.log"), terminate_group=False).stop()
        raise
    # Drivers (ray.init) use the GCS address; the Jobs API client uses the dashboard URL.
    client_env["RAY_ADDRESS"] = f"{LOOPBACK}:{gcs_port}"
    client_env["RAY_API_SERVER_ADDRESS"] = url
    return Service("ray", url, proc.pid, str(root / "ray.log"), client_env, terminate_group=False)
