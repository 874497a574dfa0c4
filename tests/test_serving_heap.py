"""A serving process settles its heap before it serves: what start-up built is frozen out of
the collector's reach, and collections come less often (the pauses this saves are measured
by bench/load.py, not here)."""

from __future__ import annotations

import gc

from server.serving import GC_THRESHOLDS, settle_heap


def _collectable(obj: object) -> bool:
    return any(any(o is obj for o in gc.get_objects(generation=g)) for g in range(3))


def test_settle_heap_freezes_what_start_up_built_and_collects_less_often() -> None:
    thresholds = gc.get_threshold()
    built_at_start_up: list[object] = [{"route": "/healthz"}]
    assert _collectable(built_at_start_up)
    try:
        settle_heap()
        assert not _collectable(built_at_start_up)
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == GC_THRESHOLDS
        assert GC_THRESHOLDS[0] > thresholds[0]
        # What is made afterwards is young, collected as before (a cycle only gc frees).
        made_after: list[object] = []
        made_after.append(made_after)
        assert _collectable(made_after)
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
