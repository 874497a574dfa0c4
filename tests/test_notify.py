"""Waiters: the requests one announcement wakes share one read, never one begun before it, and
no announcement falls between a request's read and its wait."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid

from server.notify import WAKE_BATCH, Waiters


def test_woken_waiters_share_one_read_begun_after_the_announcement() -> None:
    job = uuid.uuid4()
    waiters = Waiters(limit=100)
    reads: list[int] = []
    release = threading.Event()

    def read() -> int:  # returns which read it was
        number = len(reads) + 1
        reads.append(number)
        release.wait(5)
        return number

    async def scenario() -> None:
        with (
            waiters.waiting(job, waiters.mark()),
            waiters.waiting(job, waiters.mark()),
            waiters.waiting(job, waiters.mark()),
        ):
            waiters.wake(job)
            first = [asyncio.create_task(waiters.shared(job, read)) for _ in range(3)]
            await asyncio.sleep(0.05)
            assert len(reads) == 1  # three woken waiters, one read
            # Announced while that read runs: a waiter woken now must not take it.
            waiters.wake(job)
            later = asyncio.create_task(waiters.shared(job, read))
            await asyncio.sleep(0.05)
            release.set()
            assert [await t for t in first] == [1, 1, 1]
            assert await later == 2
            assert len(reads) == 2
            # No announcement since: the newest read is shared again.
            assert await waiters.shared(job, read) == 2
            assert len(reads) == 2

    asyncio.run(scenario())


def test_a_job_s_waiters_wake_a_batch_per_turn_of_their_loop() -> None:
    """A job of many waiting clients leaves its loop free between batches (the health probe
    and the uploads are served there), and every waiter is woken in the end."""
    job = uuid.uuid4()
    count = 2 * WAKE_BATCH + 1
    waiters = Waiters(limit=count)

    async def scenario() -> list[int]:
        with contextlib.ExitStack() as stack:
            since = waiters.mark()
            events = [stack.enter_context(waiters.waiting(job, since)) for _ in range(count)]
            waiters.wake(job)  # thread-safe: queued for the loop's next turn, as from a thread
            awake_after_turn = []
            for _ in range(6):
                awake_after_turn.append(sum(bool(e and e.is_set()) for e in events))
                await asyncio.sleep(0)  # one turn of the loop
            return awake_after_turn

    awake = asyncio.run(scenario())
    assert awake[-1] == count
    steps = [b - a for a, b in zip([0, *awake], awake, strict=False)]
    assert max(steps) == WAKE_BATCH  # never more at once
    assert awake.count(count) < len(awake)  # not all in the turn that began the wake


def test_no_more_waiters_wake_while_the_read_they_share_is_under_way() -> None:
    """Woken requests all resume when their shared read ends: only a batch of them waits on
    it, the others are woken after it and find it done."""
    job = uuid.uuid4()
    count = 2 * WAKE_BATCH + 1
    waiters = Waiters(limit=count)
    release = threading.Event()
    reads: list[int] = []

    def read() -> str:
        reads.append(1)
        release.wait(5)
        return "view"

    async def scenario() -> None:
        with contextlib.ExitStack() as stack:
            since = waiters.mark()
            events = [stack.enter_context(waiters.waiting(job, since)) for _ in range(count)]

            async def request(changed: asyncio.Event | None) -> str:
                assert changed is not None
                await changed.wait()
                return await waiters.shared(job, read)

            requests = [asyncio.create_task(request(e)) for e in events]
            waiters.wake(job)
            for _ in range(10):
                await asyncio.sleep(0)
            for _ in range(500):  # the read starts on a worker thread
                if reads:
                    break
                await asyncio.sleep(0.01)
            for _ in range(10):
                await asyncio.sleep(0)
            assert sum(bool(e and e.is_set()) for e in events) == WAKE_BATCH
            assert len(reads) == 1
            release.set()
            assert await asyncio.gather(*requests) == ["view"] * count
            assert len(reads) == 1

    asyncio.run(scenario())


def test_a_failed_read_is_not_shared_with_the_next_waiter() -> None:
    job = uuid.uuid4()
    waiters = Waiters(limit=10)
    calls: list[str] = []

    def failing() -> str:
        calls.append("failing")
        raise RuntimeError("database unavailable")

    def working() -> str:
        calls.append("working")
        return "view"

    async def scenario() -> None:
        with waiters.waiting(job, waiters.mark()):
            waiters.wake(job)
            try:
                await waiters.shared(job, failing)
            except RuntimeError:
                pass
            else:
                raise AssertionError("the read's error must reach its waiter")
            assert await waiters.shared(job, working) == "view"

    asyncio.run(scenario())
    assert calls == ["failing", "working"]


def test_a_request_that_goes_away_does_not_cancel_the_shared_read() -> None:
    job = uuid.uuid4()
    waiters = Waiters(limit=10)
    release = threading.Event()
    reads: list[None] = []

    def read() -> str:
        reads.append(None)
        release.wait(5)
        return "view"

    async def scenario() -> None:
        with waiters.waiting(job, waiters.mark()), waiters.waiting(job, waiters.mark()):
            waiters.wake(job)
            leaving = asyncio.create_task(waiters.shared(job, read))
            staying = asyncio.create_task(waiters.shared(job, read))
            await asyncio.sleep(0.05)
            leaving.cancel()
            release.set()
            assert await staying == "view"
            assert len(reads) == 1

    asyncio.run(scenario())


def test_an_announcement_during_the_read_is_seen_by_the_wait() -> None:
    job, other = uuid.uuid4(), uuid.uuid4()
    waiters = Waiters(limit=10)

    async def scenario() -> None:
        since = waiters.mark()  # the request's read begins
        waiters.wake(other)
        with waiters.waiting(job, since) as changed:  # another job's news: keep waiting
            assert changed is not None and not changed.is_set()
        waiters.wake(job)  # the job changed while (or after) the read ran
        with waiters.waiting(job, since) as changed:
            assert changed is not None and changed.is_set()
        with waiters.waiting(job, waiters.mark()) as changed:  # read after it: nothing new
            assert changed is not None and not changed.is_set()
        since = waiters.mark()
        waiters.wake_all()  # notifications may have been lost: every job re-reads
        with waiters.waiting(other, since) as changed:
            assert changed is not None and changed.is_set()

    asyncio.run(scenario())


def test_a_read_older_than_the_max_age_is_not_shared() -> None:
    job = uuid.uuid4()
    waiters = Waiters(limit=10, max_age_s=0.2)
    reads: list[None] = []

    def read() -> int:
        reads.append(None)
        return len(reads)

    async def scenario() -> None:
        # No request waits: requests asking for their task share the read all the same.
        assert await waiters.shared(job, read) == 1
        assert await waiters.shared(job, read) == 1
        await asyncio.sleep(0.3)
        assert await waiters.shared(job, read) == 2
        waiters.wake(job)  # announced: never the read begun before it
        assert await waiters.shared(job, read) == 3

    asyncio.run(scenario())
