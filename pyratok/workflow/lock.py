"""One driver per pipeline root: a lock object beside the state, with a heartbeat.

Two drivers on one root (two users, or a retried job next to a live one) would
run the same stages into the same outputs and overwrite each other's state. So
``pipeline run|rerun`` first creates ``<root>/pipeline/lock.json`` with a
create-only conditional write (S3 ``If-None-Match: *``, locally under an
exclusive file lock), naming its holder: host, pid, start time, and a heartbeat
a daemon thread refreshes with ``If-Match`` writes while the driver runs.

A second driver fails at once, naming the holder. A lock is taken over only
when its holder is certainly gone:

- the holder ran on this host and its process no longer exists (a SIGKILLed or
  OOM-killed driver): reclaimed without asking, nothing can still be running;
- its heartbeat is older than ``pipeline.lock.stale_after_s`` (a driver on
  another machine that died, or is frozen): taken over only with
  ``--take-over``, by an ``If-Match`` write on the stale version, so of two
  drivers taking over at once exactly one wins.

A driver that was frozen and wakes up after a take-over finds its heartbeat
refused and the lock naming someone else: it interrupts its running stage
(``on_lost``) and never writes the state again (:meth:`DriverLock.verify`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from pydantic import BaseModel

from pyratok.core.logging import get_logger
from pyratok.core.storage import PreconditionFailed, Storage, StorageError, join
from pyratok.workflow.config import LockConfig

log = get_logger(__name__)

LOCK_FILE = "pipeline/lock.json"


class LockHeldError(RuntimeError):
    """Another driver holds the root; the message names it and what to do."""


class LockLostError(RuntimeError):
    """This driver's lock was taken over (it was frozen past the stale timeout) or removed."""


class LockHolder(BaseModel):
    """Who holds a root, as written in ``lock.json``."""

    token: str
    """Unique per acquisition: stage records name the driver that ran them by it."""
    host: str
    pid: int
    user: str = ""
    command: str = ""
    started_at: float
    heartbeat_at: float
    proc_start: str | None = None
    """The process's start tick on its host (Linux), so a reused pid is not mistaken for it."""

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        started = dt.datetime.fromtimestamp(self.started_at).astimezone().isoformat(timespec="seconds")
        who = f" by {self.user}" if self.user else ""
        return (
            f"pid {self.pid} on host {self.host}{who}, started {started}, "
            f"last heartbeat {max(0.0, now - self.heartbeat_at):.0f}s ago"
        )

    def to_bytes(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True).encode("utf-8")


def lock_uri(root: str) -> str:
    return join(root, LOCK_FILE)


def read_lock(storage: Storage, root: str) -> tuple[LockHolder, str] | None:
    """The current holder and the lock's version, or None when the root is free."""
    try:
        data, etag = storage.read_bytes_versioned(lock_uri(root))
    except FileNotFoundError:
        return None
    try:
        return LockHolder.model_validate_json(data), etag
    except ValueError as exc:
        raise StorageError(
            f"{lock_uri(root)} is not a driver lock ({exc.__class__.__name__}); if no driver runs on this root, delete it"
        ) from exc


def _proc_start(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def holder_is_dead(holder: LockHolder) -> bool:
    """True only when we can see for sure the holder process is gone: it ran on this host and
    no process with its pid (and start tick) exists. Another host's holder is never 'dead'."""
    if holder.host != socket.gethostname():
        return False
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, another user's
        pass
    if holder.proc_start is not None:
        now = _proc_start(holder.pid)
        if now is not None and now != holder.proc_start:
            return True  # the pid was reused
        if now is None and Path("/proc").is_dir():
            return True
    try:  # a zombie (killed, not reaped yet) runs nothing
        return Path(f"/proc/{holder.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def holder_is_stale(holder: LockHolder, config: LockConfig, now: float | None = None) -> bool:
    now = time.time() if now is None else now
    return now - holder.heartbeat_at > config.stale_after_s


def holder_is_live(holder: LockHolder, config: LockConfig) -> bool:
    """What ``pipeline status`` believes: the holder can still be running its stages."""
    return not holder_is_dead(holder) and not holder_is_stale(holder, config)


class DriverLock:
    """Hold ``<root>/pipeline/lock.json`` for the life of one driver (a context manager)."""

    def __init__(self, storage: Storage, root: str, config: LockConfig, *, take_over: bool = False,
                 on_lost: Callable[[], None] | None = None):
        self.storage = storage
        self.on_lost = on_lost
        """Called (from the heartbeat thread) when the lock turns out taken over or removed."""
        self.root = root
        self.uri = lock_uri(root)
        self.config = config
        self.take_over = take_over
        now = time.time()
        pid = os.getpid()
        self.holder = LockHolder(
            token=uuid.uuid4().hex, host=socket.gethostname(), pid=pid, user=_user(),
            command=" ".join(sys.argv)[:500], started_at=now, heartbeat_at=now, proc_start=_proc_start(pid),
        )  # fmt: skip
        self._etag: str | None = None
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None
        """Why the lock is no longer ours (set by the heartbeat thread or :meth:`verify`)."""

    @property
    def token(self) -> str:
        return self.holder.token

    # -- acquire / release ------------------------------------------------------
    def acquire(self) -> "DriverLock":
        for _ in range(5):  # the lock may vanish between a refused create and our read of it
            try:
                self._etag = self.storage.write_bytes_if(self.uri, self.holder.to_bytes(), etag=None)
                break
            except PreconditionFailed:
                pass
            current = read_lock(self.storage, self.root)
            if current is None:
                continue
            other, etag = current
            if other.token == self.token:  # our own create, retried by the client
                self._etag = etag
                break
            self._take_over(other, etag)
            break
        else:
            raise LockHeldError(f"could not acquire {self.uri}: other drivers keep creating and releasing it")
        log.info("driver lock %s acquired (pid %d on %s)", self.uri, self.holder.pid, self.holder.host)
        self._thread = threading.Thread(target=self._beat, name="pyratok-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _take_over(self, other: LockHolder, etag: str) -> None:
        if holder_is_dead(other):
            why = f"its holder (pid {other.pid} on this host) no longer runs"
        elif holder_is_stale(other, self.config):
            if not self.take_over:
                raise LockHeldError(
                    f"pipeline root {self.root} is locked by a driver that looks gone: {other.describe()} "
                    f"(older than pipeline.lock.stale_after_s={self.config.stale_after_s:g}s). If that driver "
                    f"is really gone, run again with --take-over to take its lock over."
                )
            why = f"its heartbeat is older than {self.config.stale_after_s:g}s (--take-over)"
        else:
            hint = " (--take-over only takes a lock whose heartbeat is stale)" if self.take_over else ""
            raise LockHeldError(
                f"pipeline root {self.root} is in use by another driver: {other.describe()}{hint}. "
                f"Wait for it to finish (`pyratok pipeline status` shows its progress), or stop it first."
            )
        try:
            self._etag = self.storage.write_bytes_if(self.uri, self.holder.to_bytes(), etag=etag)
        except PreconditionFailed:
            now = read_lock(self.storage, self.root)
            taker = now[0].describe() if now else "a driver that has since released it"
            raise LockHeldError(f"pipeline root {self.root}: another driver took the lock over first: {taker}") from None
        log.warning("took over the driver lock of %s: %s", other.describe(), why)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._mutex:
            if self.lost or self._etag is None:
                return
            try:
                self.storage.delete_if(self.uri, etag=self._etag)
            except PreconditionFailed:
                log.warning("driver lock %s changed hands before release; left as it is", self.uri)
            except (StorageError, OSError) as exc:  # the next driver finds it stale or dead
                log.warning("could not release the driver lock %s: %s", self.uri, exc)
            self._etag = None

    def __enter__(self) -> "DriverLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # -- while running ----------------------------------------------------------
    def _beat(self) -> None:
        while not self._stop.wait(self.config.heartbeat_s):
            with self._mutex:
                if self._stop.is_set() or self.lost:
                    return
                beat = self.holder.model_copy(update={"heartbeat_at": time.time()})
                try:
                    self._etag = self.storage.write_bytes_if(self.uri, beat.to_bytes(), etag=self._etag)
                    self.holder = beat
                except (PreconditionFailed, FileNotFoundError):
                    self.lost = self._who_has_it()
                    log.error("driver lock %s lost: %s", self.uri, self.lost)
                    break
                except (StorageError, OSError) as exc:  # transient: the next beat tries again
                    log.warning("driver lock heartbeat failed (will retry): %s", exc)
        if self.lost and self.on_lost is not None and not self._stop.is_set():
            self.on_lost()

    def verify(self) -> None:
        """Raise LockLostError unless the lock on storage is still this driver's.

        Called before every state write, so a driver that was frozen past its stale timeout
        and taken over stops at once instead of racing the driver that took over.
        """
        if not self.lost:
            current = read_lock(self.storage, self.root)
            if current is None or current[0].token != self.token:
                self.lost = self._describe(current)
        if self.lost:
            raise LockLostError(f"this driver no longer holds {self.uri}: {self.lost}; stopping without writing state")

    def _who_has_it(self) -> str:
        try:
            return self._describe(read_lock(self.storage, self.root))
        except (StorageError, OSError, ValueError) as exc:
            return f"it changed and cannot be read ({exc})"

    @staticmethod
    def _describe(current: tuple[LockHolder, str] | None) -> str:
        if current is None:
            return "the lock was removed (taken over by another driver, which has finished since?)"
        return f"taken over by {current[0].describe()}"


def interrupt_main_thread() -> None:
    """``on_lost`` for a driver's main thread: stop the running stage as Ctrl-C would."""
    import _thread

    _thread.interrupt_main()


def _user() -> str:
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user database entry (containers)
        return ""
