"""Dynamic batching for one model.

Requests (each one or more images) wait in a bounded queue. A worker task takes the oldest
requests as soon as ``max_batch_size`` images are waiting, or ``max_delay_ms`` after the oldest
arrived, and runs them as one call of ``run(payloads, params)`` in a thread of its own, so the
event loop (health, metrics, other models) stays responsive. A request never splits across
batches; one larger than ``max_batch_size`` runs alone.

With ``adaptive`` (the default) the worker also stops waiting as soon as the queue holds as many
images as the previous batch had; or, when a batch was answered while requests waited for the
worker, as many as were waiting plus that batch's images (its clients are about to come back).
A lone client (previous batch: 1 image) is never delayed, while N clients whose answers went out
together are waited for (up to ``max_delay_ms``) and run together again. The delay stays an upper
bound; without ``adaptive`` every partial batch waits the full delay, as TorchServe's
``maxBatchDelay`` does.

The delay counts from the later of the oldest request's arrival and the moment the worker could
run a batch (as TorchServe's ``maxBatchDelay`` counts from when its worker asks for a batch): a
request that waited behind a running batch does not leave at once with whatever else is queued,
but waits (within the delay) for the clients that batch just answered. Without that, N clients
in a closed loop could settle into batches of 1 and N - 1 (or all of 1) for good, since each
batch's size repeats the previous one's.

With a ``prepare`` stage (the embedded backend's decode and preprocess), a batch is
``prepare(payloads, params)`` then ``run(prepared)``, and two batches may be in flight on two
threads: while one is in ``run`` (inference), the next one is already taken and prepared, so
decoding overlaps inference on another core. The second batch is taken early only when it is
full (``max_batch_size`` images waiting); a partial one waits for the batch in flight to answer,
then forms as above (taking it early would fix its size before the answered clients are back).
``run`` calls happen one at a time, in the order the batches were taken. Each batch costs the
event loop one thread hop, as without the stage.

Timing: each request's queue wait, and with a ``phases`` callable (read right after ``run`` on
its thread) each batch's phase times, go to ``/metrics`` and to the statistics extension
(:mod:`service.stats`) from the same figures.

* A full queue refuses at once (:class:`QueueFullError`, 429 with ``Retry-After``).
* Each request carries a deadline: past it the caller gets :class:`DeadlineExceededError` and
  its images are dropped from the queue if they have not started.
* A caller that goes away (its task is cancelled: client disconnect, gRPC cancellation) takes
  its images out of the queue the same way.
* Watchdog: a batch still running ``watchdog_margin_s`` after the latest deadline of its
  requests is hung (a decoder or runtime that never returns; Python cannot stop the thread). The
  batcher then fails: every waiting request gets 503 ``not_ready`` with the reason, new ones are
  refused, and ``on_hang(reason)`` lets the backend mark the model failed and rebuild it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .errors import DeadlineExceededError, NotReadyError, QueueFullError
from .metrics import Metrics
from .stats import PHASE_FIELDS

__all__ = ["BatchRunner", "DynamicBatcher"]

log = logging.getLogger(__name__)

Params = Mapping[str, Any] | None
BatchRunner = Callable[[list[bytes], list[Params]], Sequence[Any]]
BatchPreparer = Callable[[list[bytes], list[Params]], Any]
PhaseTimes = Callable[[], Mapping[str, float]]


@dataclass(eq=False)
class _Entry:
    payloads: Sequence[bytes]
    params: Sequence[Params]
    deadline: float  # loop time
    future: asyncio.Future[list[Any]]
    enqueued: float = field(default=0.0)
    taken: bool = False


class DynamicBatcher:
    def __init__(
        self,
        name: str,
        run: BatchRunner,
        *,
        max_batch_size: int,
        max_delay_ms: float,
        max_queue: int,
        metrics: Metrics,
        retry_after_s: int = 1,
        adaptive: bool = True,
        prepare: BatchPreparer | None = None,
        phases: PhaseTimes | None = None,
        watchdog_margin_s: float = 10.0,
        on_hang: Callable[[str], None] | None = None,
    ) -> None:
        """``run(payloads, params)`` answers a batch; with ``prepare``, ``run`` receives
        ``prepare(payloads, params)``'s result instead and the two stages overlap. ``phases()``
        takes the seconds per phase of the batch that just ran."""
        self.name = name
        self._run_fn: Callable[..., Sequence[Any]] = run
        self._prepare_fn = prepare
        self._phases_fn = phases
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay_ms / 1000.0
        self.max_queue = max_queue
        self.metrics = metrics
        # this model's labelled children, looked up once (``labels()`` costs per call)
        self._depth = metrics.queue_depth.labels(name)
        self._waits = metrics.queue_wait.labels(name)
        self._sizes = metrics.batch_size.labels(name)
        self._phases = {p: metrics.phase.labels(name, p) for p in PHASE_FIELDS}
        self.retry_after_s = retry_after_s
        self.adaptive = adaptive
        self._last_batch = 1  # images in the previous batch (adaptive: how many to wait for)
        self._queue: collections.deque[_Entry] = collections.deque()
        self._queued = 0  # images in the queue
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        in_flight = 1 if prepare is None else 2
        self._executor = ThreadPoolExecutor(in_flight, thread_name_prefix=f"batch-{name}")
        self._slots = asyncio.Semaphore(in_flight)  # batches taken and not yet answered
        self._turns = _Turns()  # run() in the order the batches were taken
        self._tickets = 0
        self._running: set[asyncio.Task[None]] = set()
        self._in_flight = 0  # batches taken whose callers have not all been answered
        self._answered = 0  # images answered so far (successes and failures)
        self._batch_seconds = 0.05  # running mean of a batch's duration (Retry-After hints)
        self.watchdog_margin_s = watchdog_margin_s
        self.on_hang = on_hang
        self.failure: str | None = None  # set when the watchdog found a hung batch

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=self.name)

    async def stop(self, timeout: float = 30.0) -> None:
        """Refuse new requests, finish the queued ones (up to ``timeout``), then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
                for e in self._queue:
                    if not e.future.done():
                        e.future.set_exception(NotReadyError("the server is shutting down"))
        self._turns.abandon()  # a batch waiting for a turn that will not come gives up
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def queued_images(self) -> int:
        return self._queued

    # -- requests ----------------------------------------------------------------------------
    async def submit(
        self, payloads: Sequence[bytes], params: Sequence[Params], deadline: float
    ) -> list[Any]:
        """Results for ``payloads`` in order. ``deadline`` is in ``loop.time()`` seconds."""
        loop = asyncio.get_running_loop()
        if self.failure is not None:
            raise NotReadyError(f"model {self.name!r} failed: {self.failure}")
        if self._closing:
            raise NotReadyError(f"model {self.name!r} is shutting down")
        n = len(payloads)
        if self._queued and self._queued + n > self.max_queue:
            self.metrics.rejected.labels(self.name, "queue_full").inc()
            raise QueueFullError(
                f"model {self.name!r} has {self._queued} images queued (limit {self.max_queue})",
                retry_after=self._retry_after(),
            )
        entry = _Entry(payloads, params, deadline, loop.create_future(), loop.time())
        self._queue.append(entry)
        self._queued += n
        self._depth.set(self._queued)
        entry.future.add_done_callback(lambda _f: self._forget(entry))
        self._wakeup.set()  # the worker re-checks: first arrival, batch full or target reached
        try:  # past the deadline the scope cancels the wait, and with it the future
            async with asyncio.timeout_at(deadline):
                return await entry.future
        except TimeoutError:
            self.metrics.cancelled.labels(self.name, "deadline").inc()
            raise DeadlineExceededError(
                f"no answer from model {self.name!r} within the deadline"
            ) from None
        except asyncio.CancelledError:
            self.metrics.cancelled.labels(self.name, "client").inc()
            raise

    def _forget(self, entry: _Entry) -> None:
        """A request that ended before its batch started leaves the queue."""
        if entry.taken:
            return
        try:
            self._queue.remove(entry)
        except ValueError:
            return
        self._queued -= len(entry.payloads)
        self._depth.set(self._queued)

    def _retry_after(self) -> int:
        batches = math.ceil(self._queued / self.max_batch_size)
        return max(self.retry_after_s, math.ceil(batches * self._batch_seconds))

    # -- the worker --------------------------------------------------------------------------
    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    if self._running:  # batches still in flight: answer them before returning
                        await asyncio.gather(*self._running, return_exceptions=True)
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            answered = self._answered
            # a free slot first, so that requests keep gathering while every slot is busy
            await self._slots.acquire()
            # pipelined: a partial batch waits for the one in flight to answer (see above)
            while (
                self._in_flight
                and self._queued < self.max_batch_size
                and self._queue
                and not self._closing
            ):
                self._wakeup.clear()
                await self._wakeup.wait()
            now = loop.time()
            flush_at = max(self._queue[0].enqueued, now) + self.max_delay if self._queue else now
            want = self.max_batch_size
            if self.adaptive:
                # the images waiting already, plus the clients of a batch answered while they
                # waited (they come back now); after an idle spell, as many as the last batch
                back = self._answered - answered
                want = min(want, self._queued + back if back else self._last_batch)
            while self._queued < want and not self._closing:
                remaining = flush_at - loop.time()
                if remaining <= 0 or not self._queue:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take()
            if not batch:
                self._slots.release()
                continue
            self._in_flight += 1
            task = loop.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _take(self) -> list[_Entry]:
        batch: list[_Entry] = []
        size = 0
        while self._queue:
            e = self._queue[0]
            if batch and size + len(e.payloads) > self.max_batch_size:
                break
            self._queue.popleft()
            self._queued -= len(e.payloads)
            e.taken = True
            if e.future.done():
                continue
            batch.append(e)
            size += len(e.payloads)
        self._depth.set(self._queued)
        return batch

    def _hung(self, batch: list[_Entry], seconds: float) -> None:
        """The watchdog fired: fail this batch, the queue and the batcher; tell the owner."""
        if self.failure is not None:  # a later batch stuck behind the hung one
            self._fail(batch, NotReadyError(f"model {self.name!r} failed: {self.failure}"))
            return
        self.failure = (
            f"a batch of {sum(len(e.payloads) for e in batch)} images ran {seconds:.1f} s, "
            f"more than {self.watchdog_margin_s:g} s past its deadline (hung worker)"
        )
        log.error("model %s: %s", self.name, self.failure)
        error = NotReadyError(f"model {self.name!r} failed: {self.failure}")
        self._fail(batch, error)
        self._fail(list(self._queue), error)
        self._closing = True
        self._wakeup.set()
        self._turns.abandon()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self.on_hang is not None:
            self.on_hang(self.failure)

    @staticmethod
    def _fail(batch: list[_Entry], exc: BaseException) -> None:
        for e in batch:
            if not e.future.done():
                e.future.set_exception(exc)

    def _work(
        self, ticket: int, payloads: list[bytes], params: list[Params]
    ) -> tuple[Sequence[Any], Mapping[str, float]]:
        """One batch on an executor thread: prepare (if any) freely, then run in turn."""
        if self._prepare_fn is None:
            return self._timed(self._run_fn(payloads, params))
        prepared: Any = None
        failure: Exception | None = None
        try:
            prepared = self._prepare_fn(payloads, params)
        except Exception as exc:  # reported after our turn, so the next batch is not held
            failure = exc
        with self._turns.turn(ticket):
            if failure is not None:
                raise failure
            return self._timed(self._run_fn(prepared))

    def _timed(self, results: Sequence[Any]) -> tuple[Sequence[Any], Mapping[str, float]]:
        return results, (self._phases_fn() if self._phases_fn is not None else {})

    async def _run(self, batch: list[_Entry]) -> None:
        try:
            await self._run_batch(batch)
        finally:
            self._in_flight -= 1
            self._answered += sum(len(e.payloads) for e in batch)
            self._wakeup.set()  # the worker may be holding a partial batch for this one

    async def _run_batch(self, batch: list[_Entry]) -> None:
        loop = asyncio.get_running_loop()
        try:
            start = loop.time()
            for e in batch:
                self._waits.observe(start - e.enqueued)
                self.metrics.stats.queued(self.name, start - e.enqueued)
            payloads = [p for e in batch for p in e.payloads]
            params = [p for e in batch for p in e.params]
            self._sizes.observe(len(payloads))
            self._last_batch = max(1, len(payloads))
            ticket, self._tickets = self._tickets, self._tickets + 1
            t0 = time.perf_counter()
            work = loop.run_in_executor(self._executor, self._work, ticket, payloads, params)
            patience = max(e.deadline for e in batch) + self.watchdog_margin_s - loop.time()
            try:
                results, phases = await asyncio.wait_for(asyncio.shield(work), max(patience, 0.0))
            except TimeoutError:
                self._hung(batch, time.perf_counter() - t0)
                return
            except Exception as exc:  # a server-side failure fails the batch's requests
                log.exception("batch of %d images failed on model %s", len(payloads), self.name)
                self._fail(batch, exc)
                return
            finally:
                elapsed = time.perf_counter() - t0
                self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * elapsed
        finally:
            self._slots.release()
        for phase, seconds in phases.items():
            child = self._phases.get(phase) or self.metrics.phase.labels(self.name, phase)
            child.observe(seconds)
        self.metrics.stats.executed(self.name, len(batch), len(payloads), phases)
        if len(results) != len(payloads):
            self._fail(batch, RuntimeError(f"{len(results)} results for {len(payloads)} images"))
            return
        i = 0
        for e in batch:
            n = len(e.payloads)
            if not e.future.done():
                e.future.set_result(list(results[i : i + n]))
            i += n


class _Turns:
    """Lets threads enter a section strictly in ticket order (0, 1, 2, ...)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next = 0
        self._abandoned = False

    @contextlib.contextmanager
    def turn(self, ticket: int) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: self._next == ticket or self._abandoned)
            if self._next != ticket:
                raise NotReadyError("the server is shutting down")
        try:
            yield
        finally:
            with self._cond:
                self._next += 1
                self._cond.notify_all()

    def abandon(self) -> None:
        with self._cond:
            self._abandoned = True
            self._cond.notify_all()
