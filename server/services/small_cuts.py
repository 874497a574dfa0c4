"""Small cut adapters kept in memory: what a round's train answers carry, made once per process.

Every client of one rank starts a round from the same bytes (the round's starting adapter cut
to that rank and scale). When a round opens, all of its clients ask at once; without this cache
each request would read the starting adapter, cut it and write the cut to the store (an fsync
each), ten times for ten clients. Here the first request makes the cut and the others, waiting
on that key alone, take its bytes: one cut per (round, rank, scale) and process.

A cut cannot go stale: a closed round's global adapter never changes and keys hold the job id
(random UUIDs), the round, the rank and the scale. Entries are dropped least recently used
first, beyond ``SMALL_CUTS_CACHED`` entries or ``SMALL_CUTS_CACHED_BYTES`` bytes; an adapter
too large to travel in an answer is remembered as ``None`` (no bytes), so that its clients'
answers skip the store too.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

#: Cuts a coordinator process keeps: a few rounds' worth of every rank of every running job.
SMALL_CUTS_CACHED = 1024
#: Their bytes in all (each at most ``FLAAS_INLINE_ADAPTER_MAX_BYTES``; 64 KiB by default).
SMALL_CUTS_CACHED_BYTES = 64 * 1024 * 1024

_lock = threading.Lock()
_cached: OrderedDict[str, bytes | None] = OrderedDict()
_cached_bytes = 0
_making: dict[str, threading.Lock] = {}


def small_cut(key: str, make: Callable[[], bytes | None]) -> bytes | None:
    """The cut stored under ``key``: from memory, or made by ``make`` (once, however many
    threads ask at the same time) and kept. An exception from ``make`` is raised to the caller
    that ran it and nothing is kept; the next caller tries again."""
    with _lock:
        if key in _cached:
            _cached.move_to_end(key)
            return _cached[key]
        gate = _making.setdefault(key, threading.Lock())
    # Only requests for this key wait here, on a maker that needs nothing they hold.
    with gate:
        with _lock:
            if key in _cached:
                _cached.move_to_end(key)
                return _cached[key]
        try:
            value = make()
            _keep(key, value)
        finally:
            with _lock:
                _making.pop(key, None)
    return value


def _keep(key: str, value: bytes | None) -> None:
    global _cached_bytes
    with _lock:
        _cached[key] = value
        _cached_bytes += len(value or b"")
        while len(_cached) > SMALL_CUTS_CACHED or _cached_bytes > SMALL_CUTS_CACHED_BYTES:
            _, dropped = _cached.popitem(last=False)
            _cached_bytes -= len(dropped or b"")
