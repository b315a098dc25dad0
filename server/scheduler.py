"""The engine loop: one thread owns the Engine and runs step-level continuous batching.

Requests are validated by the HTTP handler (so bad input is a 422 before anything is queued)
and submitted here as `Job`s. Between two denoising steps the thread applies cancellations and
moves waiting jobs into the batch while it has fewer than `max_batch_size` rows; a finished row
leaves the batch at the step that finished it. Jobs wait in a queue: up to `max_queue` of them
beyond the batch's free slots (which they fill at the next step), so a new job is refused
(`QueueFull`, a 429) only when the batch is full and `max_queue` jobs wait. Any mix of samplers
and canvas lengths shares a batch.

Everything a job produces goes back to its event loop through `loop.call_soon_threadsafe` into
the job's asyncio queue: one `StepEvent` per step for watched (streaming) jobs, then exactly one
outcome, `Finished`, `Cancelled` or `Failed`. A step that raises fails the requests in that
batch and the loop carries on; if the thread itself ever dies, `alive` turns false (/health
503) and every outstanding job is failed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from unmaskd.engine.loop import Engine, StepEvent
from unmaskd.engine.sequence import SequenceResult, ValidatedRequest
from unmaskd.server.metrics import Metrics

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The waiting queue is at --max-queue."""


class NotAccepting(Exception):
    """The server is shutting down, or the engine loop has died."""


@dataclass
class Finished:
    result: SequenceResult
    queue_s: float  # submission to joining the batch
    total_s: float  # submission to result


@dataclass
class Cancelled:
    reason: str  # "client" (disconnected) or "shutdown" (drain timed out)


@dataclass
class Failed:
    message: str


Outcome = Finished | Cancelled | Failed


@dataclass(eq=False)
class Job:
    """One request's trip through the engine; `queue` receives StepEvents, then one Outcome."""

    vr: ValidatedRequest
    sampler: str  # metric labels
    arm: str | None
    prompt_tokens: int
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    submitted: float = field(default_factory=time.perf_counter)
    admitted: float = 0.0
    engine_id: int | None = None
    cancel_reason: str | None = None
    done: bool = False


class Scheduler:
    def __init__(self, engine: Engine, metrics: Metrics, max_batch_size: int, max_queue: int):
        self.engine = engine
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._running: dict[int, Job] = {}  # engine request id -> job
        self._cancels: list[Job] = []
        self._admitting: list[Job] = []  # left the queue, not yet in the batch (nor done)
        self._accepting = True
        self._stopping = False
        self._died = False
        self._thread: threading.Thread | None = None

    # ---- called from the event loop ---------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="unmaskd-engine", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._died

    def submit(self, vr: ValidatedRequest, sampler: str, arm: str | None,
               prompt_tokens: int) -> Job:
        job = Job(vr, sampler, arm, prompt_tokens, asyncio.get_running_loop())
        with self._cond:
            if not self._accepting or not self.alive:
                raise NotAccepting
            # While the engine thread is inside a step, a burst can only wait: the jobs that
            # will take the batch's free slots at the next step do not count against the queue.
            free = self.max_batch_size - len(self._running) - len(self._admitting)
            if len(self._waiting) >= self.max_queue + max(0, free):
                raise QueueFull
            self._waiting.append(job)
            self._cond.notify()
        return job

    def cancel(self, job: Job, reason: str = "client") -> None:
        """Cancel a job wherever it is; a no-op once its outcome has been delivered. A waiting
        job leaves at once; a decoding one leaves the batch at the next step."""
        with self._cond:
            if job.done or job.cancel_reason is not None:
                return
            job.cancel_reason = reason
            if job in self._waiting:
                self._waiting.remove(job)
                self._finish_early(job, Cancelled(reason), "cancelled")
            else:
                self._cancels.append(job)
                self._cond.notify()

    def cancel_all(self, reason: str) -> None:
        with self._cond:
            jobs = [*self._waiting, *self._admitting, *self._running.values()]
        for job in jobs:
            self.cancel(job, reason)

    def stop_accepting(self) -> None:
        with self._cond:
            self._accepting = False

    def idle(self) -> bool:
        with self._cond:
            return not (self._waiting or self._admitting or self._running)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread; jobs still outstanding are cancelled with reason "shutdown"."""
        with self._cond:
            self._accepting = False
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- the engine thread ------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while self._iteration():
                pass
        except BaseException:
            log.exception("the engine loop died; failing outstanding requests")
            self._died = True
            with self._cond:
                self._accepting = False
                jobs = [*self._waiting, *self._admitting, *self._running.values()]
                self._waiting.clear()
                self._running.clear()
                for job in jobs:
                    if not job.done:
                        self._finish_early(job, Failed("the engine loop stopped"), "error")

    def _iteration(self) -> bool:
        with self._cond:
            while not (self._stopping or self._running or self._cancels or self._waiting):
                self._cond.wait()
            if self._stopping:
                leftovers = [*self._waiting, *self._running.values()]
                self._waiting.clear()
                self._running.clear()
                self.engine.abort_all()
                for job in leftovers:
                    self._finish_early(job, Cancelled("shutdown"), "cancelled")
                return False
            cancels, self._cancels = self._cancels, []
            while self._waiting and (len(self._running) + len(self._admitting)
                                     < self.max_batch_size):
                self._admitting.append(self._waiting.popleft())
            admit = list(self._admitting)
        for job in cancels:
            if job.engine_id is not None and not job.done:
                self.engine.cancel(job.engine_id)
        for job in admit:
            self._admit(job)
        with self._cond:
            self.metrics.load(len(self._running), len(self._waiting))
        if self.engine.active:
            self._step()
        return True

    def _admit(self, job: Job) -> None:
        try:
            engine_id = self.engine.add(job.vr)
        except Exception as e:  # validated already; anything here is a server-side fault
            log.exception("could not add a request to the batch")
            with self._cond:
                self._admitting.remove(job)
                self._finish_early(job, Failed(f"could not start decoding: {e}"), "error")
            return
        job.admitted = time.perf_counter()
        job.engine_id = engine_id
        with self._cond:  # one move, so that submit() counts every batch slot exactly once
            self._admitting.remove(job)
            self._running[engine_id] = job
        if job.cancel_reason is not None:  # cancelled between leaving the queue and now
            self.engine.cancel(engine_id)

    def _step(self) -> None:
        t0 = time.perf_counter()
        try:
            report = self.engine.step()
        except Exception as e:
            # The batch's state is unknown: fail every request in it and start afresh. The
            # thread lives on, so one bad request (or sampler plugin) cannot take the server.
            log.exception("a decoding step failed; failing the %d requests in the batch",
                          len(self._running))
            with self._cond:
                failed = list(self._running.values())
                self._running.clear()
                self.engine.abort_all()
                for job in failed:
                    self._finish_early(job, Failed(f"decoding failed: {type(e).__name__}: {e}"),
                                       "error")
            return
        now = time.perf_counter()
        self.metrics.step(now - t0, report.batch_size, report.sampler_s, report.cache_bytes)
        out: list[tuple[Job, StepEvent | Outcome]] = []
        for event in report.events:
            if (job := self._running.get(event.request_id)) is not None:
                out.append((job, event))
        with self._cond:
            for res in report.finished:
                job = self._running.pop(res.request_id, None)
                if job is None:
                    continue
                queue_s, total_s = job.admitted - job.submitted, now - job.submitted
                self.metrics.request_finished(
                    job.sampler, job.arm, res.finish_reason, gen_length=res.gen_length,
                    nfe=res.nfe, prompt_tokens=job.prompt_tokens, queue_s=queue_s,
                    total_s=total_s)
                outcome: Outcome = (Cancelled(job.cancel_reason or "client")
                                    if res.finish_reason == "cancelled"
                                    else Finished(res, queue_s, total_s))
                job.done = True
                out.append((job, outcome))
            self.metrics.load(len(self._running), len(self._waiting))
        _deliver(out)

    def _finish_early(self, job: Job, outcome: Outcome, status: str) -> None:
        """Deliver an outcome for a job that never completed decoding. Caller holds the lock
        (a re-entrant one)."""
        job.done = True
        self.metrics.request_ended_early(job.sampler, job.arm, status)
        self.metrics.load(len(self._running), len(self._waiting))
        _deliver([(job, outcome)])


def _deliver(items: list[tuple[Job, StepEvent | Outcome]]) -> None:
    """Hand items to their jobs' event loops: one thread-safe callback per loop per call."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, StepEvent | Outcome]]] = {}
    for job, item in items:
        by_loop.setdefault(job.loop, []).append((job, item))
    for loop, batch in by_loop.items():
        try:
            loop.call_soon_threadsafe(_put_all, batch)
        except RuntimeError:  # the loop has closed: nobody is waiting for these any more
            pass


def _put_all(batch: list[tuple[Job, StepEvent | Outcome]]) -> None:
    for job, item in batch:
        job.queue.put_nowait(item)
