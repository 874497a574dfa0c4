"""A serving process settles its heap before it serves: what start-up built is frozen out of
the collector's reach, young objects are collected less often by count and at least every
``YOUNG_INTERVAL_S``, and old ones on a clock only (the pauses this saves are measured by
bench/load.py, not here)."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from typing import Any

from server.serving import GC_THRESHOLDS, YOUNG_INTERVAL_S, settle_heap


class _Node:
    """Something only the cyclic collector frees once it refers to itself."""

    def __init__(self) -> None:
        self.itself = self


def _collectable(obj: object) -> bool:
    return any(any(o is obj for o in gc.get_objects(generation=g)) for g in range(3))


def _freed(ref: weakref.ref[_Node], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while ref() is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    return ref() is None


def test_settle_heap_freezes_start_up_and_collects_the_old_generation_on_a_clock() -> None:
    thresholds = gc.get_threshold()
    built_at_start_up: list[object] = [{"route": "/healthz"}]
    assert _collectable(built_at_start_up)
    collections = settle_heap(0.05)
    try:
        assert not _collectable(built_at_start_up)
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == GC_THRESHOLDS
        assert GC_THRESHOLDS[0] > thresholds[0]
        # What is made afterwards is young, collected as before.
        made_after: list[object] = []
        made_after.append(made_after)
        assert _collectable(made_after)
        # A cycle that outlived its young collections is garbage in the old generation, which
        # the collector no longer walks by itself: the clock's full collection frees it.
        old = _Node()
        gc.collect(1)  # survivors of a middle collection move to the old generation
        assert any(o is old for o in gc.get_objects(generation=2))
        ref = weakref.ref(old)
        del old
        assert _freed(ref, within_s=10)
    finally:
        collections.stop()
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    collections.join(timeout=5)
    assert not collections.is_alive()


def test_the_clock_collects_young_objects_whatever_the_count_says() -> None:
    """Old objects dying hold the collector's count back while young ones pile up: the clock
    collects the young generation (and the middle one in its turn) all the same."""
    thresholds = gc.get_threshold()
    by_clock: list[int] = []

    def note(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and threading.current_thread().name == "flaas-collections":
            by_clock.append(info["generation"])

    gc.callbacks.append(note)
    clock = settle_heap(600)
    try:
        deadline = time.monotonic() + 20 * YOUNG_INTERVAL_S
        while not {0, 1} <= set(by_clock) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert {0, 1} <= set(by_clock)
        assert 2 not in by_clock  # the full one waits for its interval
    finally:
        clock.stop()
        gc.callbacks.remove(note)
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_without_the_clock_a_cycle_in_the_old_generation_stays() -> None:
    """The test above can fail: the thresholds alone leave old garbage where it is."""
    thresholds = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        old = _Node()
        gc.collect(1)
        ref = weakref.ref(old)
        del old
        for _ in range(200):  # allocations enough for many young and middle collections
            _ = [[] for _ in range(1000)]
        assert ref() is not None
    finally:
        gc.set_threshold(*thresholds)
        gc.collect()
    assert ref() is None
