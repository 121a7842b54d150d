"""The pool of loaded models: detectors and their per-shape backends in one LRU under a memory budget.

Each entry costs what loading it added to the process's resident memory, measured on a trimmed heap (at least its
model's size on disk or in tensors); a backend's load includes its first inference, where OpenVINO and ONNX Runtime
allocate their activations. When the sum passes the budget (``$STARNET_MODEL_MEMORY_MB``, default
``DEFAULT_BUDGET_MB``), the entries used longest ago are dropped, a detector with its backends, and freed memory is
handed back to the system. A request that holds a dropped model finishes with it; the next one loads it again.
Entries load in parallel, one load per key (two loads at once each count the other's memory too: over, not under).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

log = logging.getLogger(__name__)

#: Room for a few models and input shapes on the CPU; what a shape costs (S1 on OpenVINO, compiled and run once:
#: 45 MB at 128 px, 74 at 640, 152 at 1280) is measured in ``docs/operations.md``.
DEFAULT_BUDGET_MB = 600


def budget_bytes() -> int:
    """``$STARNET_MODEL_MEMORY_MB`` (default ``DEFAULT_BUDGET_MB``) in bytes."""
    return int(float(os.environ.get("STARNET_MODEL_MEMORY_MB") or DEFAULT_BUDGET_MB) * 2**20)


def rss_bytes() -> int:
    """This process's resident memory (Linux's /proc; psutil elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss


@lru_cache(maxsize=1)
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def give_back_memory() -> None:
    """Return freed heap pages to the system (glibc's ``malloc_trim``), so that RSS falls when models are dropped
    and the next load's cost is measured on fresh pages, not on reused ones."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


@dataclass
class _Entry:
    value: Any
    cost: int
    owner: Hashable | None


class ModelPool:
    """``get(key, load, floor, owner)``: the cached value, else ``load()`` once (other callers of the key wait)."""

    def __init__(self, budget: Callable[[], int] = budget_bytes):
        self._budget = budget
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._loading: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], Any], floor: Callable[[Any], int] = lambda _: 0,
            owner: Hashable | None = None) -> Any:
        """The value for ``key``, loading it if needed; ``floor(value)``: the least it may be said to cost;
        ``owner``: the key whose eviction takes this entry along."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key].value
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
                    return self._entries[key].value
            try:
                give_back_memory()  # else the load reuses pages freed since the last trim and is undercounted
                before = rss_bytes()
                value = load()
                cost = max(rss_bytes() - before, floor(value), 0)
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            with self._lock:
                self._entries[key] = _Entry(value, cost, owner)
                dropped = self._evict(keep=key)
        if dropped:
            log.info("model pool: dropped %d model(s) to stay within %d MB", dropped, self._budget() // 2**20)
            give_back_memory()
        return value

    def _evict(self, keep: Hashable) -> int:
        budget, dropped = self._budget(), 0
        while sum(e.cost for e in self._entries.values()) > budget:
            victim = next((k for k in self._entries if k != keep and k != self._entries[keep].owner), None)
            if victim is None:
                break
            dropped += self._drop(victim)
        return dropped

    def _drop(self, key: Hashable) -> int:
        self._entries.pop(key, None)
        owned = [k for k, e in self._entries.items() if e.owner == key]
        for k in owned:
            self._entries.pop(k)
        return 1 + len(owned)

    def discard(self, key: Hashable) -> None:
        """Drop ``key`` and what it owns (a model found broken)."""
        with self._lock:
            self._drop(key)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
        give_back_memory()

    def stats(self) -> dict[str, int]:
        """Entries and their summed cost in bytes, against the budget."""
        with self._lock:
            return {"entries": len(self._entries), "bytes": sum(e.cost for e in self._entries.values()),
                    "budget_bytes": self._budget()}

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries
