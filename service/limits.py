"""The gateway-wide budget of concurrent requests (``max_concurrent_requests``), shared by the
HTTP middleware and the gRPC servicer so that the limit holds across both transports. Both run on
the same event loop, so plain counting is race-free."""

from __future__ import annotations

from .errors import OverloadedError
from .metrics import Metrics

__all__ = ["ConcurrencyLimit"]


class ConcurrencyLimit:
    def __init__(self, limit: int, retry_after_s: int, metrics: Metrics) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self.active = 0

    def acquire(self) -> None:
        """Take one slot, or refuse at once (503/UNAVAILABLE with Retry-After)."""
        if self.active >= self.limit:
            self.metrics.rejected.labels("", "overloaded").inc()
            raise OverloadedError(
                f"more than {self.limit} concurrent requests", retry_after=self.retry_after_s
            )
        self.active += 1

    def release(self) -> None:
        self.active -= 1
