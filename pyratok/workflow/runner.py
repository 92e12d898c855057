"""Runs declared stages in order, skipping what is already done, recording everything.

A stage runs when its fingerprint (its config keys + its upstream stages'
output fingerprints) differs from its last completed record, or when it is
forced (``rerun``). Each run is an MLflow run nested under one pipeline run per
invocation, tagged with the URIs and fingerprints of what it consumed and
produced and the run ids of the upstream stage executions — so any checkpoint
traces back to the shards and caption version it was trained on.

A run holds the root's driver lock (:mod:`pyratok.workflow.lock`) from before it
reads the state until after its last write, and every state write is a
compare-and-swap; a stage that raises anything (KeyboardInterrupt and SIGTERM
included) is recorded ``failed`` with the error before the error goes on.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Iterator

from pyratok.core.logging import get_logger
from pyratok.core.storage import Storage, StorageError, join
from pyratok.core.tracking import stage_run
from pyratok.workflow.lock import (
    DriverLock, LockHeldError, LockHolder, LockLostError, holder_is_live, interrupt_main_thread, read_lock,
)  # fmt: skip
from pyratok.workflow.stage import StageContext, StageSpec
from pyratok.workflow.state import PipelineState, StateConflictError, StageRecord, load_state, save_state

log = get_logger(__name__)

PARENT_ENV = "PYRATOK_PARENT_RUN_ID"


class PipelineError(RuntimeError):
    """A stage failed; the message names it and the state records the error."""


class RootInUseError(PipelineError):
    """Another driver holds this pipeline root (or took it over from this one): nothing ran."""


@dataclass
class StageView:
    """One row of `pipeline status`."""

    name: str
    state: str
    record: StageRecord
    current_fingerprint: str


def pipeline_root(config) -> str:
    return config.pipeline.root or join(os.path.abspath(config.work_dir), "pipeline")


@contextlib.contextmanager
def _parent_run(run_id: str | None) -> Iterator[None]:
    """Stage code opens its MLflow run via tracking.stage_run, which nests under this id."""
    saved = os.environ.get(PARENT_ENV)
    if run_id:
        os.environ[PARENT_ENV] = run_id
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(PARENT_ENV, None)
        else:
            os.environ[PARENT_ENV] = saved


class PipelineRunner:
    def __init__(self, config, stages: list[StageSpec], *, storage: Storage | None = None):
        self.config = config
        self.stages = [s for s in stages if s.enabled(config)]
        self.by_name = {s.name: s for s in self.stages}
        self.storage = storage or Storage(config.storage)
        self.root = pipeline_root(config)
        self._lock: DriverLock | None = None
        """The driver lock while :meth:`run` runs."""
        names = [s.name for s in self.stages]
        for spec in self.stages:
            for dep in spec.after:
                if dep in self.by_name and names.index(dep) > names.index(spec.name):
                    raise ValueError(f"stage {spec.name!r} is declared before its upstream {dep!r}")

    # -- queries -----------------------------------------------------------
    def load(self) -> PipelineState:
        return load_state(self.storage, self.root)

    def downstream_of(self, name: str) -> list[str]:
        """Stages that (transitively) consume ``name``'s outputs, in pipeline order."""
        hit = {name}
        out = []
        for spec in self.stages:
            if any(dep in hit for dep in spec.after):
                hit.add(spec.name)
                out.append(spec.name)
        return out

    def lock_holder(self) -> LockHolder | None:
        """Who holds the root's driver lock now (None: free)."""
        current = read_lock(self.storage, self.root)
        return current[0] if current else None

    def views(self, state: PipelineState | None = None) -> list[StageView]:
        state = state or self.load()
        holder = self.lock_holder()
        live = holder if holder is not None and holder_is_live(holder, self.config.pipeline.lock) else None
        rows, stale = [], set()
        for spec in self.stages:
            record = state.stages.get(spec.name) or StageRecord(name=spec.name)
            current, _, _ = spec.fingerprints(self.config, state.stages)
            label = record.status
            # Interrupted: recorded as running, but no live driver is running it (killed driver).
            if record.status == "running" and (live is None or (record.driver and record.driver != live.token)):
                label = "interrupted"
            # Stale: built from other config/inputs than today's, or from a stale upstream.
            if record.status == "completed" and (record.fingerprint != current or stale & set(spec.after)):
                label = "stale"
                stale.add(spec.name)
            rows.append(StageView(spec.name, label, record, current))
        return rows

    # -- execution -----------------------------------------------------------
    def run(self, *, force: set[str] = frozenset(), only: set[str] | None = None, take_over: bool = False) -> PipelineState:
        """Run the pipeline; ``only`` restricts which stages may run (others are neither run nor
        checked), ``force`` reruns stages even when their fingerprint matches, ``take_over``
        takes the root's driver lock from a holder whose heartbeat is stale.

        Raises RootInUseError, before anything runs, when another driver holds the root."""
        unknown = (set(force) | set(only or ())) - set(self.by_name)
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)}; stages: {', '.join(self.by_name)}")
        # A driver frozen past its stale timeout and taken over stops its stage when it wakes up.
        on_lost = interrupt_main_thread if threading.current_thread() is threading.main_thread() else None
        lock = DriverLock(self.storage, self.root, self.config.pipeline.lock, take_over=take_over, on_lost=on_lost)
        try:
            lock.acquire()
        except LockHeldError as exc:
            raise RootInUseError(str(exc)) from None
        self._lock = lock
        try:
            return self._run_locked(force, only)
        except KeyboardInterrupt as exc:
            if lock.lost:  # the heartbeat found the lock taken over and interrupted us
                raise RootInUseError(f"stopped: this driver lost the root's lock ({lock.lost})") from exc
            raise
        finally:
            self._lock = None
            lock.release()

    def _save(self, state: PipelineState) -> None:
        """Write the state only while this driver still holds the root, and only over the
        version it last saw (a conflict or a lost lock stops the driver: RootInUseError)."""
        try:
            if self._lock is not None:
                self._lock.verify()
            save_state(self.storage, state)
        except (LockLostError, StateConflictError) as exc:
            raise RootInUseError(str(exc)) from exc

    def _run_locked(self, force: set[str], only: set[str] | None) -> PipelineState:
        state = self.load()
        started = time.time()
        with stage_run(
            self.config.tracking, self.config.work_dir, "pipeline", self.config,
            tags={"pyratok.pipeline_root": self.root, "pyratok.forced": ",".join(sorted(force))},
            sections=("work_dir", "pipeline"),
        ) as parent:  # fmt: skip
            parent_id = parent.info.run_id if parent else None
            if parent_id:
                state.pipeline_runs.append(parent_id)
                self._save(state)
            for spec in self.stages:
                if only is not None and spec.name not in only:
                    continue
                self._run_stage(spec, state, forced=spec.name in force, parent_id=parent_id)
            if parent:
                import mlflow

                mlflow.log_metric("pipeline_wall_s", time.time() - started)
        return state

    def _run_stage(self, spec: StageSpec, state: PipelineState, *, forced: bool, parent_id: str | None) -> None:
        record = state.record(spec.name)
        missing = [dep for dep in spec.after if dep in self.by_name and state.stages.get(dep, StageRecord(name=dep)).status != "completed"]
        if missing:
            raise PipelineError(f"stage {spec.name!r} needs {missing} completed first (run `pyratok pipeline run`)")
        fp, config_fp, input_fps = spec.fingerprints(self.config, state.stages)
        if not forced and record.status == "completed" and record.fingerprint == fp:
            log.info("stage %s: up to date (fingerprint %s), skipped", spec.name, fp)
            self._tag_parent(parent_id, spec.name, f"cached:{record.mlflow_run_id or '-'}")
            return
        # An unfinished attempt with the same inputs resumes (stages keep their own progress).
        resume = record.status in ("running", "failed") and record.fingerprint == fp and not forced
        record.status, record.fingerprint, record.config_fingerprint = "running", fp, config_fp
        record.input_fingerprints = input_fps
        record.upstream_runs = {d: state.stages[d].mlflow_run_id or "" for d in spec.after if d in state.stages}
        record.started_at, record.ended_at, record.error = time.time(), None, None
        record.driver = self._lock.token if self._lock is not None else None
        record.attempts += 1
        try:  # from the first write of "running" on, every way out records how it ended
            self._save(state)
            log.info("stage %s: running%s (fingerprint %s)", spec.name, " (resume)" if resume else "", fp)
            ctx = StageContext(self.config, self.storage, self.root, {d: state.stages[d] for d in spec.after if d in state.stages}, resume)
            with _parent_run(parent_id):
                result = spec.run(ctx)
            record.outputs, record.output_fingerprint = result.outputs, result.fingerprint
            record.mlflow_run_id = result.mlflow_run_id
            record.inputs = _inputs_of(spec, state)
            record.status, record.ended_at = "completed", time.time()
            self._save(state)
        except RootInUseError:
            raise  # the root is someone else's now: their state is not ours to write
        except BaseException as exc:
            if self._lock is not None and self._lock.lost:  # interrupted by the lock's loss: not ours to record
                lost = self._lock.lost
                raise RootInUseError(f"stage {spec.name!r} stopped: this driver lost the root's lock ({lost})") from exc
            self._record_failure(spec, record, state, exc, parent_id)
            if not isinstance(exc, Exception):  # KeyboardInterrupt (Ctrl-C, SIGTERM), SystemExit
                raise
            log.debug("stage %s failed:\n%s", spec.name, traceback.format_exc())
            raise PipelineError(f"stage {spec.name!r} failed: {record.error}") from exc
        self._tag_lineage(record)
        self._tag_parent(parent_id, spec.name, f"ran:{record.mlflow_run_id or '-'}", record.duration_s)
        log.info("stage %s: completed in %.1fs", spec.name, record.duration_s or 0)

    def _record_failure(self, spec: StageSpec, record: StageRecord, state: PipelineState, exc: BaseException,
                        parent_id: str | None) -> None:
        """Record ``failed`` with the error; a failure to record (storage down, root taken over)
        is logged and never hides the stage's own error."""
        record.status, record.ended_at = "failed", time.time()
        record.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        try:
            self._save(state)
        except (RootInUseError, StorageError, OSError) as save_exc:
            log.error("stage %s failed (%s), and recording that failed too: %s", spec.name, record.error, save_exc)
        try:
            self._tag_parent(parent_id, spec.name, "failed")
        except Exception as tag_exc:  # noqa: BLE001 - MLflow trouble must not mask the stage's error
            log.warning("could not tag the pipeline run with stage %s's failure: %s", spec.name, tag_exc)

    # -- MLflow lineage --------------------------------------------------------
    def _tag_lineage(self, record: StageRecord) -> None:
        if not (self.config.tracking.enabled and record.mlflow_run_id):
            return
        import mlflow

        tags = {"pyratok.fingerprint": record.fingerprint or "", "pyratok.output_fingerprint": record.output_fingerprint or ""}
        tags.update({f"pyratok.input.{k}": v for k, v in record.inputs.items()})
        tags.update({f"pyratok.output.{k}": v for k, v in record.outputs.items()})
        tags.update({f"pyratok.upstream_run.{k}": v for k, v in record.upstream_runs.items() if v})
        client = mlflow.MlflowClient()
        for key, value in tags.items():
            client.set_tag(record.mlflow_run_id, key, str(value)[:5000])

    def _tag_parent(self, parent_id: str | None, stage: str, value: str, duration_s: float | None = None) -> None:
        if not parent_id:
            return
        import mlflow

        client = mlflow.MlflowClient()
        client.set_tag(parent_id, f"pyratok.stage.{stage}", value)
        if duration_s is not None:
            client.log_metric(parent_id, f"stage_wall_s.{stage}", duration_s)


def _inputs_of(spec: StageSpec, state: PipelineState) -> dict[str, str]:
    """The upstream outputs this stage consumed, named ``<stage>.<output>``."""
    out = {}
    for dep in spec.after:
        for key, value in state.stages.get(dep, StageRecord(name=dep)).outputs.items():
            out[f"{dep}.{key}"] = value
    return out
