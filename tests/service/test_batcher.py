"""The dynamic batcher on its own, with a fake runner: batch formation, order, bounded queue,
deadlines, cancellation, drain on stop."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from service.batcher import DynamicBatcher
from service.errors import DeadlineExceededError, NotReadyError, QueueFullError
from service.metrics import Metrics


class Runner:
    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.batches: list[list[bytes]] = []
        self.gate = gate
        self.fail = fail

    def __call__(self, payloads: list[bytes], params: list[Any]) -> list[Any]:
        if self.gate is not None:
            self.gate.wait(10)
        self.batches.append(list(payloads))
        if self.fail:
            raise RuntimeError("boom")
        return [{"echo": p, "params": q} for p, q in zip(payloads, params, strict=True)]


def make(runner: Runner, **kw: Any) -> DynamicBatcher:
    opts = {"max_batch_size": 4, "max_delay_ms": 30.0, "max_queue": 16, **kw}
    return DynamicBatcher("m", runner, metrics=Metrics(), **opts)


def far() -> float:
    return asyncio.get_running_loop().time() + 30


def test_concurrent_requests_form_batches_in_order() -> None:
    runner = Runner()

    async def main() -> list[list[Any]]:
        b = make(runner)
        b.start()
        reqs = [b.submit([bytes([i]), bytes([i, i])], [{"i": i}] * 2, far()) for i in range(6)]
        out = await asyncio.gather(*reqs)
        await b.stop()
        return out

    out = asyncio.run(main())
    for i, res in enumerate(out):  # every caller gets its own answers, in order
        assert [r["echo"] for r in res] == [bytes([i]), bytes([i, i])]
        assert all(r["params"] == {"i": i} for r in res)
    sizes = [len(x) for x in runner.batches]
    assert sum(sizes) == 12 and max(sizes) == 4  # 2-image requests pair up; none split


def test_max_delay_flushes_a_partial_batch() -> None:
    runner = Runner()

    async def main() -> float:
        b = make(runner, max_batch_size=8, max_delay_ms=50, adaptive=False)
        b.start()
        t0 = time.perf_counter()
        await b.submit([b"a"], [None], far())
        dt = time.perf_counter() - t0
        await b.stop()
        return dt

    dt = asyncio.run(main())
    assert 0.04 <= dt < 1.0 and runner.batches == [[b"a"]]


def test_adaptive_a_lone_client_is_not_delayed() -> None:
    runner = Runner()

    async def main() -> list[float]:
        b = make(runner, max_batch_size=8, max_delay_ms=500)
        b.start()
        waits = []
        for i in range(5):  # one client, one request at a time
            t0 = time.perf_counter()
            await b.submit([bytes([i])], [None], far())
            waits.append(time.perf_counter() - t0)
        await b.stop()
        return waits

    waits = asyncio.run(main())
    assert max(waits) < 0.25, waits  # the fixed policy would wait 0.5 s each time
    assert [len(x) for x in runner.batches] == [1] * 5


def test_adaptive_waits_for_as_many_as_the_previous_batch() -> None:
    runner = Runner()

    async def main() -> list[int]:
        b = make(runner, max_batch_size=8, max_delay_ms=2000)
        b.start()
        # two requests sent together run as one batch of 2
        await asyncio.gather(*(b.submit([bytes([i])], [None], far()) for i in range(2)))
        # the 2 clients of that batch come back 50 ms apart: the worker waits for the second
        # (the previous batch had 2 images) instead of running the first alone
        first = asyncio.ensure_future(b.submit([b"x"], [None], far()))
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        await asyncio.gather(first, b.submit([b"y"], [None], far()))
        assert time.perf_counter() - t0 < 1.0  # the 2 s delay bound was not needed
        await b.stop()
        return [len(x) for x in runner.batches]

    assert asyncio.run(main()) == [2, 2]


def test_full_queue_refuses_at_once_and_others_finish() -> None:
    gate = threading.Event()
    runner = Runner(gate)

    async def main() -> None:
        b = make(runner, max_batch_size=1, max_delay_ms=0, max_queue=2)
        b.start()
        running = asyncio.ensure_future(b.submit([b"0"], [None], far()))
        await asyncio.sleep(0.05)  # taken by the worker, blocked in the runner
        queued = [asyncio.ensure_future(b.submit([bytes([i])], [None], far())) for i in (1, 2)]
        await asyncio.sleep(0.01)
        assert b.queued_images == 2
        t0 = time.perf_counter()
        with pytest.raises(QueueFullError) as info:
            await b.submit([b"3"], [None], far())
        assert time.perf_counter() - t0 < 0.05
        assert info.value.retry_after is not None and info.value.retry_after >= 1
        gate.set()
        assert len(await asyncio.gather(running, *queued)) == 3
        await b.stop()

    asyncio.run(main())
    assert runner.batches == [[b"0"], [b"\x01"], [b"\x02"]]


def test_deadline_and_cancellation_leave_the_queue() -> None:
    gate = threading.Event()
    runner = Runner(gate)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        b = make(runner, max_batch_size=1, max_delay_ms=0)
        b.start()
        first = asyncio.ensure_future(b.submit([b"first"], [None], far()))
        await asyncio.sleep(0.05)
        with pytest.raises(DeadlineExceededError):
            await b.submit([b"late"], [None], loop.time() + 0.05)
        gone = asyncio.ensure_future(b.submit([b"gone"], [None], far()))
        await asyncio.sleep(0.01)
        assert b.queued_images == 1
        gone.cancel()  # the client went away
        await asyncio.sleep(0.01)
        assert b.queued_images == 0
        gate.set()
        await first
        await b.stop()

    asyncio.run(main())
    assert runner.batches == [[b"first"]]  # neither the late nor the cancelled image ran


def test_runner_failure_fails_its_batch_only() -> None:
    async def main() -> None:
        b = make(Runner(fail=True))
        b.start()
        with pytest.raises(RuntimeError, match="boom"):
            await b.submit([b"x"], [None], far())
        await b.stop()

    asyncio.run(main())


def test_stop_drains_the_queue_then_refuses() -> None:
    runner = Runner()

    async def main() -> None:
        b = make(runner, max_batch_size=2, max_delay_ms=200)
        b.start()
        pending = [asyncio.ensure_future(b.submit([bytes([i])], [None], far())) for i in range(3)]
        await asyncio.sleep(0)
        await b.stop()
        assert all(len(p.result()) == 1 for p in pending)
        with pytest.raises(NotReadyError):
            await b.submit([b"x"], [None], far())

    asyncio.run(main())
    assert sum(len(x) for x in runner.batches) == 3


# -- two stages: prepare (decode) overlaps run (inference) ---------------------------------
class TwoStage:
    """``prepare`` tags the batch; ``run`` can be held until the next batch's prepare started."""

    def __init__(self, fail_prepare_on: bytes | None = None) -> None:
        self.events: list[tuple[str, list[bytes]]] = []
        self.lock = threading.Lock()
        self.second_prepare_started = threading.Event()
        self.hold_first_run = False
        self.fail_prepare_on = fail_prepare_on
        self.overlapped = False

    def prepare(self, payloads: list[bytes], params: list[Any]) -> Any:
        with self.lock:
            self.events.append(("prepare", list(payloads)))
            if sum(kind == "prepare" for kind, _ in self.events) == 2:
                self.second_prepare_started.set()
        if self.fail_prepare_on is not None and self.fail_prepare_on in payloads:
            raise ValueError("cannot prepare")
        return [(p, q, "prepared") for p, q in zip(payloads, params, strict=True)]

    def run(self, prepared: list[Any]) -> list[Any]:
        with self.lock:
            first = not any(kind == "run" for kind, _ in self.events)
            self.events.append(("run", [p for p, _, _ in prepared]))
        if first and self.hold_first_run:
            # the worker must prepare the next batch while this one is still running
            self.overlapped = self.second_prepare_started.wait(10)
        return [{"echo": p, "params": q, "stage": s} for p, q, s in prepared]


def make_two_stage(stages: TwoStage, **kw: Any) -> DynamicBatcher:
    opts = {"max_batch_size": 2, "max_delay_ms": 20.0, "max_queue": 16, **kw}
    return DynamicBatcher("m", stages.run, prepare=stages.prepare, metrics=Metrics(), **opts)


def test_pipelined_batches_overlap_and_keep_order() -> None:
    stages = TwoStage()
    stages.hold_first_run = True

    async def main() -> list[list[Any]]:
        b = make_two_stage(stages)
        b.start()
        reqs = [b.submit([bytes([i])], [{"i": i}], far()) for i in range(6)]
        out = await asyncio.gather(*reqs)
        await b.stop()
        return out

    out = asyncio.run(main())
    assert stages.overlapped  # batch 2 was prepared while batch 1 was still in run
    for i, res in enumerate(out):
        assert res == [{"echo": bytes([i]), "params": {"i": i}, "stage": "prepared"}]
    runs = [batch for kind, batch in stages.events if kind == "run"]
    prepares = [batch for kind, batch in stages.events if kind == "prepare"]
    assert runs == prepares  # same batches, same order, each prepared before it ran
    assert [p for batch in runs for p in batch] == [bytes([i]) for i in range(6)]


def test_a_failing_prepare_fails_its_batch_only() -> None:
    stages = TwoStage(fail_prepare_on=b"bad")

    async def main() -> tuple[Any, Any, Any]:
        b = make_two_stage(stages, max_batch_size=1)
        b.start()
        results = await asyncio.gather(
            b.submit([b"ok1"], [None], far()),
            b.submit([b"bad"], [None], far()),
            b.submit([b"ok2"], [None], far()),
            return_exceptions=True,
        )
        await b.stop()
        return results[0], results[1], results[2]

    first, bad, last = asyncio.run(main())
    assert first[0]["echo"] == b"ok1" and last[0]["echo"] == b"ok2"
    assert isinstance(bad, ValueError)


def test_stop_finishes_the_batch_in_the_run_stage() -> None:
    gate = threading.Event()
    stages = TwoStage()
    slow_run = stages.run

    def run(prepared: list[Any]) -> list[Any]:
        gate.wait(10)
        return slow_run(prepared)

    async def main() -> list[Any]:
        b = DynamicBatcher(
            "m", run, prepare=stages.prepare, metrics=Metrics(),
            max_batch_size=2, max_delay_ms=1.0, max_queue=16,
        )  # fmt: skip
        b.start()
        reqs = [asyncio.ensure_future(b.submit([bytes([i])], [None], far())) for i in range(4)]
        await asyncio.sleep(0.1)  # batch 1 is held in run, batch 2 prepared and waiting
        stopping = asyncio.ensure_future(b.stop(timeout=10))
        await asyncio.sleep(0.05)
        with pytest.raises(NotReadyError):  # refuses new work while it drains
            await b.submit([b"late"], [None], far())
        gate.set()
        out = await asyncio.gather(*reqs)
        await stopping
        return out

    out = asyncio.run(main())
    assert [r[0]["echo"] for r in out] == [bytes([i]) for i in range(4)]


def test_statistics_come_from_the_same_figures_as_the_metrics() -> None:
    metrics = Metrics()
    phases = {"preprocess": 0.002, "inference": 0.005, "postprocess": 0.001}

    async def main() -> None:
        b = DynamicBatcher(
            "m", Runner(), phases=lambda: phases, metrics=metrics,
            max_batch_size=4, max_delay_ms=20.0, max_queue=16,
        )  # fmt: skip
        b.start()
        sizes = [1, 2, 1, 3, 1]  # 8 images in 5 requests
        await asyncio.gather(*(b.submit([b"x"] * n, [None] * n, far()) for n in sizes))
        await b.stop()

    asyncio.run(main())
    stats = metrics.stats.model_stats("m")

    def sample(name: str, **labels: str) -> float:
        value = metrics.registry.get_sample_value(name, {"model": "m", **labels})
        return float(value or 0.0)

    executions = sample("sepvit_batch_size_count")
    assert stats["execution_count"] == executions >= 2
    assert stats["inference_count"] == sample("sepvit_batch_size_sum") == 8
    infer = stats["inference_stats"]
    assert infer["queue"]["count"] == 5
    assert infer["queue"]["ns"] == pytest.approx(sample("sepvit_queue_wait_seconds_sum") * 1e9)
    for phase, name in [("preprocess", "compute_input"), ("inference", "compute_infer")]:
        per_batch = sum(s[name]["ns"] for s in stats["batch_stats"])
        assert per_batch == pytest.approx(
            sample("sepvit_phase_duration_seconds_sum", phase=phase) * 1e9
        )
        assert per_batch == round(phases[phase] * 1e9) * executions
        # per request, each is charged its batch's time: 5 requests
        assert infer[name] == {"count": 5, "ns": round(phases[phase] * 1e9) * 5}
    assert sum(s["batch_size"] * s["compute_infer"]["count"] for s in stats["batch_stats"]) == 8


@pytest.mark.parametrize("pipelined", [False, True])
def test_closed_loop_clients_settle_into_full_batches(pipelined: bool) -> None:
    """4 clients, each sending its next request when the last is answered, start out of step
    (batches of 1). Batches then grow to all 4 and stay there: each batch's clients are waited
    for, within the delay, from the moment the worker could run them (not from the oldest
    arrival, which has always passed after waiting behind a batch), and a pipelined worker does
    not take a partial batch while one is in flight. (Before, the sizes repeated themselves: 1,
    1, 1, ... or 1, 3, 1, 3.)"""
    sizes: list[int] = []

    def run(payloads: list[bytes], params: list[Any]) -> list[Any]:
        sizes.append(len(payloads))
        time.sleep(0.02)  # inference: 20 ms a batch
        return list(payloads)

    async def main() -> None:
        kw: dict[str, Any] = {"max_batch_size": 8, "max_delay_ms": 10.0, "max_queue": 64}
        if pipelined:
            b = DynamicBatcher("m", run, prepare=lambda p, q: p, metrics=Metrics(), **kw)
        else:
            b = DynamicBatcher("m", run, metrics=Metrics(), **kw)
        b.start()

        async def client(i: int) -> None:
            await asyncio.sleep(0.007 * i)  # out of step: each arrives while another runs
            for _ in range(12):
                await b.submit([bytes([i])], [None], far())

        await asyncio.gather(*(client(i) for i in range(4)))
        await b.stop()

    if pipelined:  # prepare returns the payloads; run gets them as one argument
        run_one = run
        run = lambda prepared: run_one(prepared, [None] * len(prepared))  # noqa: E731
    asyncio.run(main())
    assert sum(sizes) == 48
    steady = sizes[2:-2]  # the first batches are out of step, the last ones as clients finish
    assert len(steady) >= 8 and all(n == 4 for n in steady), sizes
