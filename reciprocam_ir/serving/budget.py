"""Bounds on decoding in one server process: the pixels a request may decode, the pixels all
requests in flight may hold, and how many images are decoded at once.

A decoded image costs memory in proportion to its pixels (RGB bytes, then the resized model
input), so the budget is counted in pixels, from each image's header, before any is decoded;
the pixels of a request stay reserved until its answer is built.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

DEFAULT_REQUEST_PIXELS = 100_000_000
"""Pixels one request may decode, all its images together (the reader's default limit for
one image)."""
DEFAULT_PROCESS_PIXELS = 150_000_000
"""Pixels the requests in flight in one server process may hold together: one request of
the largest size and room for ordinary ones beside it."""
DEFAULT_DECODE_THREADS = 2
"""Images decoded at once per process (not asyncio's default pool of cores + 4 threads)."""


class PixelBudget:
    """Pixels reserved by requests in flight, refused beyond ``limit`` (thread-safe)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def reserve(self, pixels: int) -> bool:
        """Reserve ``pixels`` if they fit beside those in flight; False (nothing reserved) if
        not."""
        with self._lock:
            if self.used + pixels > self.limit:
                return False
            self.used += pixels
            return True

    def release(self, pixels: int) -> None:
        with self._lock:
            self.used -= pixels


_budgets: dict[int, PixelBudget] = {}
_pools: dict[int, ThreadPoolExecutor] = {}
_lock = threading.Lock()


def process_budget(limit: int) -> PixelBudget:
    """This process's budget of ``limit`` pixels, shared by every model it serves."""
    with _lock:
        return _budgets.setdefault(limit, PixelBudget(limit))


def decode_pool(threads: int) -> ThreadPoolExecutor:
    """This process's decoding threads (``threads`` of them), shared by every model."""
    with _lock:
        if threads not in _pools:
            _pools[threads] = ThreadPoolExecutor(max_workers=threads,
                                                 thread_name_prefix="decode")
        return _pools[threads]
