"""The driver lock on a pipeline root, on local disk and on S3 (a moto server).

The holder is a real separate process; "frozen past its heartbeat" is a real
SIGSTOP, "died" a real SIGKILL. Takers race for real (threads with their own
storage clients).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pyratok.core.storage import Storage, StorageConfig, join
from pyratok.workflow.config import LockConfig
from pyratok.workflow.lock import DriverLock, LockHeldError, read_lock

REPO = Path(__file__).resolve().parents[2]
STALE, BEAT = 2.0, 0.25
CONFIG = LockConfig(stale_after_s=STALE, heartbeat_s=BEAT)

HOLDER = """
import sys, time
from pyratok.core.storage import Storage, StorageConfig
from pyratok.workflow.config import LockConfig
from pyratok.workflow.lock import DriverLock, LockLostError
root, endpoint = sys.argv[1], sys.argv[2] or None
lock = DriverLock(Storage(StorageConfig(endpoint_url=endpoint)), root,
                  LockConfig(stale_after_s=float(sys.argv[3]), heartbeat_s=float(sys.argv[4]))).acquire()
print("held", lock.token, flush=True)
try:
    while True:
        time.sleep(0.05)
        lock.verify()
except LockLostError as exc:
    print("lost:", exc, flush=True)
    sys.exit(7)
"""


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path):
    """``(storage, root, endpoint)`` on a local folder or a fresh bucket of the moto server."""
    if request.param == "local":
        return Storage(), str(tmp_path / "root"), ""
    bucket = request.getfixturevalue("s3_bucket")
    endpoint = request.getfixturevalue("s3_server")
    return Storage(StorageConfig(endpoint_url=endpoint)), join(bucket, "root"), endpoint


def start_holder(root: str, endpoint: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, root, endpoint, str(STALE), str(BEAT)],
        stdout=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True,
    )  # fmt: skip
    line = proc.stdout.readline()
    assert line.startswith("held "), f"holder did not start: {line!r} (rc {proc.poll()})"
    return proc, line.split()[1]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def test_a_live_holder_keeps_the_root_and_beats(where):
    storage, root, endpoint = where
    proc, token = start_holder(root, endpoint)
    try:
        holder, _ = read_lock(storage, root)
        assert (holder.token, holder.pid, holder.host) == (token, proc.pid, socket.gethostname())
        first_beat = holder.heartbeat_at
        wait_until(lambda: read_lock(storage, root)[0].heartbeat_at > first_beat, 10, "a heartbeat")
        for take_over in (False, True):  # a live lock is never taken, --take-over or not
            with pytest.raises(LockHeldError) as err:
                DriverLock(storage, root, CONFIG, take_over=take_over).acquire()
            msg = str(err.value)
            assert "in use by another driver" in msg and f"pid {proc.pid} on host {socket.gethostname()}" in msg
            assert "started 20" in msg
        assert read_lock(storage, root)[0].token == token
    finally:
        stop(proc)


def test_a_stale_lock_needs_take_over_and_exactly_one_taker_wins(where):
    storage, root, endpoint = where
    proc, token = start_holder(root, endpoint)
    winners: list[DriverLock] = []
    try:
        os.killpg(proc.pid, signal.SIGSTOP)  # frozen: alive, but its heartbeat stops
        wait_until(lambda: time.time() - read_lock(storage, root)[0].heartbeat_at > STALE + 0.2, 20, "a stale lock")
        with pytest.raises(LockHeldError, match="looks gone.*--take-over") as err:
            DriverLock(storage, root, CONFIG).acquire()
        assert f"pid {proc.pid}" in str(err.value)
        assert read_lock(storage, root)[0].token == token  # refused: nothing changed

        takers, barrier, refused = 6, threading.Barrier(6), []

        def take() -> None:
            lock = DriverLock(Storage(storage.config), root, CONFIG, take_over=True)
            barrier.wait()
            try:
                winners.append(lock.acquire())
            except LockHeldError as exc:
                refused.append(str(exc))

        threads = [threading.Thread(target=take) for _ in range(takers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(winners) == 1 and len(refused) == takers - 1, (winners, refused)
        assert all("took the lock over first" in r or "in use by another driver" in r for r in refused)
        assert read_lock(storage, root)[0].token == winners[0].token

        # The frozen holder wakes up: it finds the lock taken and stops, without touching it.
        os.killpg(proc.pid, signal.SIGCONT)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 7 and f"taken over by pid {os.getpid()}" in out, out
        assert read_lock(storage, root)[0].token == winners[0].token
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGCONT)
        stop(proc)
        for lock in winners:
            lock.release()
    assert read_lock(storage, root) is None  # released by its holder


def test_the_lock_of_a_killed_driver_on_this_host_is_reclaimed_at_once(where):
    storage, root, endpoint = where
    proc, token = start_holder(root, endpoint)
    stop(proc)  # SIGKILL: no chance to release
    holder, _ = read_lock(storage, root)
    assert holder.token == token and time.time() - holder.heartbeat_at < STALE  # fresh, but its process is gone
    lock = DriverLock(storage, root, CONFIG).acquire()
    try:
        assert read_lock(storage, root)[0].token == lock.token
    finally:
        lock.release()
    assert read_lock(storage, root) is None
