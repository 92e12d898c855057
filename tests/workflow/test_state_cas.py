"""Compare-and-swap writes of the pipeline state, on local disk and on S3 (a moto server).

Writers that read the same version race for real (threads, and processes locally);
a writer with a stale version must be refused, never overwrite, and no update may
be lost when writers reload and retry.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from pyratok.core.storage import PreconditionFailed, Storage, join
from pyratok.workflow.state import PipelineState, StateConflictError, load_state, save_state, state_uri


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path):
    """``(storage, root)`` on a local folder or a fresh bucket of the moto server."""
    if request.param == "local":
        return Storage(), str(tmp_path / "root")
    bucket = request.getfixturevalue("s3_bucket")
    return request.getfixturevalue("s3_storage"), join(bucket, "root")


def test_conditional_writes_refuse_a_stale_version_and_keep_the_other_writers_bytes(where):
    storage, root = where
    uri = join(root, "obj.json")
    first = storage.write_bytes_if(uri, b"one", etag=None)
    assert storage.read_bytes_versioned(uri) == (b"one", first)
    with pytest.raises(PreconditionFailed, match="expected it absent"):
        storage.write_bytes_if(uri, b"other creator", etag=None)
    second = storage.write_bytes_if(uri, b"two", etag=first)
    assert second != first
    with pytest.raises(PreconditionFailed, match=f"at version {first}"):
        storage.write_bytes_if(uri, b"stale writer", etag=first)
    assert storage.read_bytes_versioned(uri) == (b"two", second)
    with pytest.raises(PreconditionFailed):
        storage.delete_if(uri, etag=first)
    assert storage.read_bytes(uri) == b"two"
    storage.delete_if(uri, etag=second)
    assert not storage.exists(uri)
    with pytest.raises(PreconditionFailed):  # an update of an object that is gone is no create
        storage.write_bytes_if(uri, b"resurrected", etag=second)
    assert not storage.exists(uri)


def test_a_second_state_writer_with_a_stale_version_fails_instead_of_overwriting(where):
    storage, root = where
    save_state(storage, PipelineState(root=root))
    mine, theirs = load_state(storage, root), load_state(storage, root)
    mine.record("ingest").status = "completed"
    save_state(storage, mine)
    theirs.record("caption").status = "running"
    with pytest.raises(StateConflictError, match="changed by another writer since this driver read it"):
        save_state(storage, theirs)
    on_disk = json.loads(storage.read_bytes(state_uri(root)))
    assert set(on_disk["stages"]) == {"ingest"} and on_disk["stages"]["ingest"]["status"] == "completed"
    # The refused writer reloads and reapplies its change: both changes survive.
    theirs = load_state(storage, root)
    theirs.record("caption").status = "running"
    save_state(storage, theirs)
    again = load_state(storage, root)
    assert {n: r.status for n, r in again.stages.items()} == {"ingest": "completed", "caption": "running"}
    # A writer that never saw the state may not create it over an existing one.
    with pytest.raises(StateConflictError):
        save_state(storage, PipelineState(root=root))


def _append_with_retries(storage: Storage, root: str, ids: list[str]) -> int:
    """Append each id to ``pipeline_runs`` by read-modify-CAS, reloading on conflict."""
    conflicts = 0
    for item in ids:
        while True:
            state = load_state(storage, root)
            state.pipeline_runs.append(item)
            try:
                save_state(storage, state)
                break
            except StateConflictError:
                conflicts += 1
    return conflicts


def test_racing_writers_lose_no_update(where):
    storage, root = where
    writers, per_writer = 4, 8
    ids = [[f"w{w}-{i}" for i in range(per_writer)] for w in range(writers)]
    barrier = threading.Barrier(writers)
    conflicts: list[int] = []

    def writer(mine: list[str]) -> None:
        own = Storage(storage.config)  # one client per writer, as separate drivers would have
        barrier.wait()
        conflicts.append(_append_with_retries(own, root, mine))

    threads = [threading.Thread(target=writer, args=(mine,)) for mine in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(conflicts) == writers  # every writer finished (the refused ones reloaded and retried)
    runs = load_state(storage, root).pipeline_runs
    assert sorted(runs) == sorted(i for mine in ids for i in mine)  # every update, each once
    for mine in ids:  # each writer's own updates in its order
        assert [r for r in runs if r.startswith(mine[0].split("-")[0] + "-")] == mine


WRITER = """
import os, sys, time
from pyratok.core.storage import Storage
from tests.workflow.test_state_cas import _append_with_retries
root, name, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
while not os.path.exists(go):  # start together
    time.sleep(0.01)
print(_append_with_retries(Storage(), root, [f"{name}-{i}" for i in range(n)]))
"""
REPO = Path(__file__).resolve().parents[2]


def test_racing_writer_processes_lose_no_update_on_local_disk(tmp_path):
    root = str(tmp_path / "root")
    names = [uuid.uuid4().hex[:6] for _ in range(3)]
    go = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, root, name, "15", str(go)], stdout=subprocess.PIPE, text=True, cwd=REPO)
        for name in names
    ]
    time.sleep(2)  # let them import
    go.touch()
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    runs = load_state(Storage(), root).pipeline_runs
    assert sorted(runs) == sorted(f"{n}-{i}" for n in names for i in range(15))
