"""`pyratok pipeline run` drivers as real processes on one root: one at a time, failures recorded.

The stage that holds a driver busy is the real sample-data stage (~10 s of ffmpeg);
"a live driver" is one that runs it, "a frozen driver" one SIGSTOPped mid-stage, "a
killed driver" one SIGKILLed mid-stage. MLflow is off: it has nothing to do with locking.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyratok.config import load
from pyratok.core.storage import Storage
from pyratok.workflow.lock import read_lock
from pyratok.workflow.runner import PipelineRunner
from pyratok.workflow.stages import pipeline_stages
from pyratok.workflow.state import PipelineState, load_state, state_uri

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
HOST = socket.gethostname()
FAST_LOCK = ["pipeline.lock.stale_after_s=3", "pipeline.lock.heartbeat_s=0.5"]


def sets_for(work: Path, *extra: str) -> list[str]:
    return [f"work_dir={work}", "pipeline.stages=[sample-data]", "tracking.enabled=false", *extra]


def command(work: Path, *extra: str, flags: tuple[str, ...] = ()) -> list[str]:
    cmd = [sys.executable, "-m", "pyratok.cli.main", "pipeline", "run", *flags]
    for item in sets_for(work, *extra):
        cmd += ["--set", item]
    return cmd


def start(work: Path, *extra: str, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(command(work, *extra), stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)


def run(work: Path, *extra: str, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(command(work, *extra, flags=flags), capture_output=True, text=True, cwd=REPO, timeout=300)


def runner_for(work: Path, *extra: str) -> PipelineRunner:
    cfg = load("local", sets_for(work, *extra))
    return PipelineRunner(cfg, pipeline_stages(cfg))


def root_of(work: Path) -> str:
    return str(work / "pipeline")


def wait_running(work: Path, proc: subprocess.Popen, log: Path) -> str:
    """Wait until ``proc`` holds the lock and runs sample-data; its lock token."""
    storage, root = Storage(), root_of(work)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the driver ended early:\n{log.read_text()}"
        lock = read_lock(storage, root)
        rec = load_state(storage, root).stages.get("sample-data")
        if lock and lock[0].pid == proc.pid and rec and rec.status == "running" and rec.driver == lock[0].token:
            return lock[0].token
        time.sleep(0.1)
    pytest.fail("the driver never started its stage")


def state_bytes(work: Path) -> bytes:
    return Storage().read_bytes(state_uri(root_of(work)))


def finish(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGCONT)
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def test_a_second_driver_on_a_live_root_fails_at_once_naming_the_holder(tmp_path):
    work, log = tmp_path / "work", tmp_path / "a.log"
    first = start(work, log=log)
    try:
        token = wait_running(work, first, log)
        os.killpg(first.pid, signal.SIGSTOP)  # keep it mid-stage, holding the lock, while the second one tries
        before = state_bytes(work)
        t0 = time.monotonic()
        second = run(work)
        took = time.monotonic() - t0
        assert second.returncode == 3, second.stderr
        assert f"is in use by another driver: pid {first.pid} on host {HOST}" in second.stderr
        started = read_lock(Storage(), root_of(work))[0].started_at
        assert time.strftime("%Y-%m-%dT%H:%M", time.localtime(started)) in second.stderr
        assert took < 60 and "stage sample-data: running" not in second.stderr  # failed before any stage
        assert state_bytes(work) == before  # and wrote nothing
        # Frozen for a moment only (heartbeat fresh): status shows its stage running, not interrupted.
        assert [v.state for v in runner_for(work).views()] == ["running"]
        os.killpg(first.pid, signal.SIGCONT)
        assert first.wait(180) == 0, log.read_text()
    finally:
        finish(first)
    state = PipelineState.model_validate(json.loads(state_bytes(work)))  # valid, complete
    rec = state.stages["sample-data"]
    assert (rec.status, rec.attempts, rec.driver, rec.error) == ("completed", 1, token, None)
    assert Path(rec.outputs["inputs"]).is_file()
    assert read_lock(Storage(), root_of(work)) is None  # released at the end


def test_a_stale_lock_is_taken_over_only_with_take_over(tmp_path):
    work, log = tmp_path / "work", tmp_path / "a.log"
    frozen = start(work, *FAST_LOCK, log=log)
    try:
        token = wait_running(work, frozen, log)
        os.killpg(frozen.pid, signal.SIGSTOP)
        storage = Storage()
        while time.time() - read_lock(storage, root_of(work))[0].heartbeat_at <= 3.2:
            time.sleep(0.1)
        refused = run(work, *FAST_LOCK)
        assert refused.returncode == 3, refused.stderr
        assert f"locked by a driver that looks gone: pid {frozen.pid} on host {HOST}" in refused.stderr
        assert "--take-over" in refused.stderr
        assert [v.state for v in runner_for(work, *FAST_LOCK).views()] == ["interrupted"]

        taker = run(work, *FAST_LOCK, flags=("--take-over",))
        assert taker.returncode == 0, taker.stderr
        assert "took over the driver lock" in taker.stderr and "(resume)" in taker.stderr
        done = state_bytes(work)
        rec = load_state(storage, root_of(work)).stages["sample-data"]
        assert (rec.status, rec.attempts) == ("completed", 2) and rec.driver != token

        # The frozen driver wakes up: it stops (exit 3) without writing the state or the lock.
        os.killpg(frozen.pid, signal.SIGCONT)
        assert frozen.wait(120) == 3, log.read_text()
        assert "lost the root's lock" in log.read_text() or "no longer holds" in log.read_text()
        assert state_bytes(work) == done
        assert read_lock(storage, root_of(work)) is None
    finally:
        finish(frozen)


def test_a_failed_ingest_records_failed_with_its_error(tmp_path):
    work = tmp_path / "work"
    (tmp_path / "m.csv").write_text("path,caption\nclip.mp4,a clip\n")
    spec = f"{{source: manifest, metadata: {tmp_path / 'm.csv'}, videos: {tmp_path / 'no-such-dir'}}}"
    extra = ("pipeline.sample_data=false", "pipeline.stages=[ingest]", f"ingest.inputs=[{spec}]")
    cmd = [sys.executable, "-m", "pyratok.cli.main", "pipeline", "run"]
    for item in [f"work_dir={work}", "tracking.enabled=false", *extra]:
        cmd += ["--set", item]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 1, out.stderr
    error = f"ValueError: videos folder {tmp_path / 'no-such-dir'} does not exist"
    assert f"stage 'ingest' failed: {error}" in out.stderr
    rec = load_state(Storage(), root_of(work)).stages["ingest"]
    assert (rec.status, rec.error, rec.attempts) == ("failed", error, 1) and rec.ended_at >= rec.started_at
    summary = json.loads((work / "pipeline" / "dataset" / "ingest.json").read_text())
    assert (summary["status"], summary["error"]) == ("failed", error)  # not left "running"
    assert read_lock(Storage(), root_of(work)) is None


@pytest.mark.parametrize(("sig", "code", "error"), [
    (signal.SIGINT, 130, "KeyboardInterrupt"),
    (signal.SIGTERM, 143, "KeyboardInterrupt: terminated by SIGTERM"),
])  # fmt: skip
def test_an_interrupted_driver_records_failed_and_releases_the_root(tmp_path, sig, code, error):
    work, log = tmp_path / "work", tmp_path / "a.log"
    proc = start(work, log=log)
    try:
        wait_running(work, proc, log)
        os.kill(proc.pid, sig)  # the driver only (a job runner's stop), not its ffmpeg children
        assert proc.wait(120) == code, log.read_text()
    finally:
        finish(proc)
    rec = load_state(Storage(), root_of(work)).stages["sample-data"]
    assert (rec.status, rec.error) == ("failed", error)
    assert read_lock(Storage(), root_of(work)) is None


def test_a_killed_driver_shows_interrupted_and_the_next_run_resumes(tmp_path):
    work, log = tmp_path / "work", tmp_path / "a.log"
    proc = start(work, log=log)
    try:
        token = wait_running(work, proc, log)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        finish(proc)
    storage = Storage()
    assert load_state(storage, root_of(work)).stages["sample-data"].status == "running"  # what it left
    assert read_lock(storage, root_of(work))[0].token == token  # and its lock, heartbeat still fresh
    assert [v.state for v in runner_for(work).views()] == ["interrupted"]
    cmd = [sys.executable, "-m", "pyratok.cli.main", "pipeline", "status"]
    for item in sets_for(work):
        cmd += ["--set", item]
    status = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert status.returncode == 0 and "interrupted" in status.stdout
    assert f"stale lock of a gone driver: pid {proc.pid} on host {HOST}" in " ".join(status.stdout.split())
    as_json = subprocess.run([*cmd, "--json"], capture_output=True, text=True, cwd=REPO, timeout=120)
    document = json.loads(as_json.stdout)
    assert [(s["stage"], s["state"], s["recorded_status"]) for s in document["stages"]] == [
        ("sample-data", "interrupted", "running")]
    assert (document["lock"]["pid"], document["lock"]["host"], document["lock"]["stale"]) == (proc.pid, HOST, True)

    again = run(work)  # no --take-over needed: the holder's process is gone from this host
    assert again.returncode == 0, again.stderr
    rec = load_state(storage, root_of(work)).stages["sample-data"]
    assert (rec.status, rec.attempts, rec.error) == ("completed", 2, None) and rec.driver != token
    assert read_lock(storage, root_of(work)) is None
