"""The event loop's heartbeat: a task that wakes every ``interval`` seconds and records how late
it woke (``sepvit_event_loop_lag_seconds``). Liveness (:meth:`DataPlane.live`) fails when the
last beat is older than ``liveness_stall_s``: the loop stopped turning (a blocking call, a
runaway callback chain) or the heartbeat itself died. The first liveness probe answered after a
stall reports it, so a kubelet that sees failures in a row restarts the pod. (The model-level
watchdog, for hung batches, is in :mod:`service.batcher`.)"""

from __future__ import annotations

import asyncio
import contextlib
import time

from .metrics import Metrics

__all__ = ["LoopWatch"]


class LoopWatch:
    def __init__(self, metrics: Metrics, stall_s: float, interval: float = 0.1) -> None:
        self.metrics = metrics
        self.stall_s = stall_s
        self.interval = interval
        self.last = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.last = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._beat(), name="loop-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            self.metrics.loop_lag.observe(max(0.0, now - self.last - self.interval))
            self.last = now

    def stalled(self) -> bool:
        """True when the loop has not turned for ``stall_s`` (or the heartbeat is gone)."""
        running = self._task is not None and not self._task.done()
        return (self._task is not None and not running) or (
            time.monotonic() - self.last > self.stall_s
        )
