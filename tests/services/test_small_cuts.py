"""Small cuts: made once per key however many requests ask at once, kept within a limit."""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict

import pytest

from server.services import small_cuts
from server.services.small_cuts import small_cut


def _key() -> str:
    return f"distributed/{uuid.uuid4()}/r8"


def test_concurrent_requests_for_one_key_make_it_once() -> None:
    key, made, entered, release = _key(), [], threading.Event(), threading.Event()

    def make() -> bytes:
        made.append(threading.current_thread().name)
        entered.set()
        release.wait(10)
        return b"cut"

    answers: list[bytes | None] = []
    first = threading.Thread(target=lambda: answers.append(small_cut(key, make)))
    first.start()
    assert entered.wait(10)
    others = [
        threading.Thread(target=lambda: answers.append(small_cut(key, make))) for _ in range(7)
    ]
    for thread in others:
        thread.start()
    time.sleep(0.1)  # the others reach the key's gate while the first one is still making it
    release.set()
    for thread in [first, *others]:
        thread.join(10)
    assert len(made) == 1
    assert answers == [b"cut"] * 8
    assert small_cut(key, lambda: pytest.fail("made again")) == b"cut"


def test_a_failed_make_keeps_nothing_and_the_next_request_tries_again() -> None:
    key = _key()

    def broken() -> bytes:
        raise OSError("the store is down")

    with pytest.raises(OSError, match="store is down"):
        small_cut(key, broken)
    assert small_cut(key, lambda: b"cut") == b"cut"


def test_a_large_adapter_is_remembered_as_none() -> None:
    key = _key()
    assert small_cut(key, lambda: None) is None
    assert small_cut(key, lambda: pytest.fail("made again")) is None


def test_the_least_recently_used_cut_goes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(small_cuts, "_cached", OrderedDict())  # only this test's cuts
    monkeypatch.setattr(small_cuts, "_cached_bytes", 0)
    monkeypatch.setattr(small_cuts, "SMALL_CUTS_CACHED_BYTES", 10)
    a, b, c = _key(), _key(), _key()
    small_cut(a, lambda: b"aaaa")
    small_cut(b, lambda: b"bbbb")
    assert small_cut(a, lambda: b"new") == b"aaaa"  # "b" is now the least recently used
    small_cut(c, lambda: b"cccc")  # 12 bytes: "b" goes
    assert small_cut(b, lambda: b"BBBB") == b"BBBB"  # made again; "a" goes
    assert small_cut(c, lambda: b"CCCC") == b"cccc"
    assert small_cut(a, lambda: b"AAAA") == b"AAAA"
