"""Job-change notifications: how a long-polled task request learns its answer may have changed.

The round state machine (``services.rounds``) announces a job once a transaction that changed
it commits (a round opened or closed, the job started, ended, failed or was cancelled), through
``Runtime.notify``. In a coordinator that is ``JobNotifier.publish``: it wakes this process's
waiting task requests for the job (``Waiters``) and, when the broker is Redis, publishes the
job's id on ``CHANNEL``. Every coordinator process subscribes to that channel (``JobNotifier``
runs the subscriber on its event loop), so a round closed by a Celery worker, or opened by
another coordinator process, wakes the clients waiting here. Workers only publish
(``announcer_for``).

Notifications are hints, never state: a woken request re-reads its task from the database (the
requests one announcement wakes share that read), and every wait is bounded, so a lost message
(Redis down, a publish failing) delays an answer by at most the request's wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import redis
import redis.asyncio
from starlette.concurrency import run_in_threadpool

from server.services.runtime import JobAnnounce

log = logging.getLogger(__name__)

T = TypeVar("T")

CHANNEL = "flaas:job-changed"
# A publish runs on the thread that committed (after commit): it must not hold that thread
# long when Redis is slow or gone.
PUBLISH_TIMEOUT_S = 1.0
RESUBSCRIBE_DELAY_S = 1.0
# How long task requests share a job's read when nothing is announced (``Waiters.shared``).
READ_MAX_AGE_S = 1.0
# Waiters woken per turn of their event loop (``Waiters.wake``): between two turns the loop
# serves what else is ready (a health probe, an upload), which would otherwise queue behind
# every waiter of a job of 10,000 clients at once (about a second of the loop's time).
WAKE_BATCH = 100


def redis_url_of(broker_url: str | None) -> str | None:
    """The broker's URL when it is Redis (its pub/sub carries the notifications), else None."""
    if broker_url and broker_url.split("://", 1)[0] in {"redis", "rediss"}:
        return broker_url
    return None


@dataclass(frozen=True, eq=False)
class _Waiter:
    loop: asyncio.AbstractEventLoop
    event: asyncio.Event


@dataclass(frozen=True, eq=False)
class _Read:
    """A read of a job's view: the job's announcement number when it began, when it began
    (``time.monotonic``), and its future."""

    announced: int
    begun: float
    future: asyncio.Future[Any]


class Waiters:
    """The task requests of this process that wait for their job to change, at most ``limit``.

    Registered from the event loop, woken from any thread (a request thread or the embedded
    worker committing a transition): each waiter's event is set through its own loop, a batch
    per turn of it (``WAKE_BATCH``, ``_wake_in_turns``). The task requests of a job share its
    newest read (``shared``) until the job is announced again or the read is ``max_age_s``
    old: a round opening for thousands of waiting clients costs one query, not thousands, and
    so do their renewed waits.
    """

    def __init__(self, limit: int, max_age_s: float = READ_MAX_AGE_S) -> None:
        self.limit = limit
        self.max_age_s = max_age_s
        # What wakes waiters now (``_wake_in_turns``), each on its loop.
        self._waking: set[asyncio.Future[None]] = set()
        # Guards everything below; never held across an await.
        self._lock = threading.Lock()
        self._jobs: dict[uuid.UUID, set[_Waiter]] = {}
        self._reads: dict[uuid.UUID, _Read] = {}
        self._count = 0
        # Announcements heard so far, and the number at which each job (or every job, for
        # wake_all) was last announced: what ``mark`` and ``waiting(since=)`` compare.
        self._sequence = 0
        self._job_announced_at: dict[uuid.UUID, int] = {}
        self._all_announced_at = 0

    @property
    def count(self) -> int:
        """Requests waiting now."""
        return self._count

    def mark(self) -> int:
        """The announcements heard so far: taken before a read, passed to ``waiting`` after
        it, so that no announcement falls between the read and the wait."""
        with self._lock:
            return self._sequence

    @contextlib.contextmanager
    def waiting(self, job_id: uuid.UUID, since: int) -> Iterator[asyncio.Event | None]:
        """An event set whenever ``job_id`` is announced, already set if it was announced
        after ``mark()`` returned ``since``; None when ``limit`` requests already wait (the
        caller answers at once). Call on the event loop."""
        waiter = _Waiter(asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            admitted = self._count < self.limit
            if admitted:
                self._jobs.setdefault(job_id, set()).add(waiter)
                self._count += 1
                if self._announced_at(job_id) > since:
                    waiter.event.set()
        try:
            yield waiter.event if admitted else None
        finally:
            if admitted:
                with self._lock:
                    waiting = self._jobs[job_id]
                    waiting.discard(waiter)
                    if not waiting:
                        del self._jobs[job_id]
                    self._count -= 1

    async def shared(self, job_id: uuid.UUID, read: Callable[[], T]) -> T:
        """``read()`` on a worker thread, begun after the job's latest announcement and less
        than ``max_age_s`` ago: the read another request of the job began, or a new one. Call
        on the event loop.

        What the read sees may have changed unannounced since (an enrolment count, an update
        accepted): callers read again what that could mislead (``routes.clients._task``).
        """
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        with self._lock:
            announced = self._announced_at(job_id)
            current = self._reads.get(job_id)
            if (
                current is None
                or current.announced != announced
                or current.future.get_loop() is not loop
                or (current.future.done() and (_failed(current.future) or self._old(current, now)))
            ):
                self._forget_old_reads(now)
                future = asyncio.ensure_future(run_in_threadpool(read))
                current = self._reads[job_id] = _Read(announced, now, future)
        if current.future.done():  # most of a job's woken waiters: no future to await
            return cast(T, current.future.result())
        # Shielded: a request that goes away does not cancel the read the others wait for.
        return cast(T, await asyncio.shield(current.future))

    def _announced_at(self, job_id: uuid.UUID) -> int:
        return max(self._job_announced_at.get(job_id, 0), self._all_announced_at)

    def _old(self, read: _Read, now: float) -> bool:
        return now - read.begun >= self.max_age_s

    def _forget_old_reads(self, now: float) -> None:
        """Drop the finished reads no request may share any more (jobs nobody polls)."""
        for job_id, read in list(self._reads.items()):
            if read.future.done() and self._old(read, now):
                del self._reads[job_id]

    def wake(self, job_id: uuid.UUID) -> None:
        """Wake the requests waiting for ``job_id`` (thread-safe)."""
        with self._lock:
            self._sequence += 1
            # One number per job announced; set before the events, so a woken waiter never
            # shares a read begun before the announcement.
            self._job_announced_at[job_id] = self._sequence
            waiting = {job_id: list(self._jobs.get(job_id, ()))}
        self._set(waiting)

    def wake_all(self) -> None:
        """Wake every waiting request (after notifications may have been lost)."""
        with self._lock:
            self._sequence += 1
            self._all_announced_at = self._sequence
            waiting = {job_id: list(job) for job_id, job in self._jobs.items()}
        self._set(waiting)

    def _set(self, waiting: dict[uuid.UUID, list[_Waiter]]) -> None:
        """Hand each loop its waiters' events, to set in turns (``_wake_in_turns``)."""
        events: dict[asyncio.AbstractEventLoop, dict[uuid.UUID, list[asyncio.Event]]] = {}
        for job_id, job in waiting.items():
            for waiter in job:
                events.setdefault(waiter.loop, {}).setdefault(job_id, []).append(waiter.event)
        for loop, jobs in events.items():
            with contextlib.suppress(RuntimeError):  # its loop has closed: nobody waits
                loop.call_soon_threadsafe(self._start_waking, jobs)

    def _start_waking(self, jobs: dict[uuid.UUID, list[asyncio.Event]]) -> None:
        for job_id, events in jobs.items():
            task = asyncio.ensure_future(self._wake_in_turns(job_id, events))
            self._waking.add(task)  # the loop keeps only a weak reference to a task
            task.add_done_callback(self._waking.discard)

    async def _wake_in_turns(self, job_id: uuid.UUID, events: list[asyncio.Event]) -> None:
        """Set ``WAKE_BATCH`` of ``events`` per turn of the loop, none while a read of the job
        is under way: the requests woken before it share it and resume together when it
        ends, so no more than a batch of them do at once; the later ones find it done."""
        for start in range(0, len(events), WAKE_BATCH):
            with self._lock:
                read = self._reads.get(job_id)
            if read is not None and not read.future.done():
                await asyncio.wait([read.future])  # neither raises nor cancels it
            for event in events[start : start + WAKE_BATCH]:
                event.set()
            await asyncio.sleep(0)


def _failed(future: asyncio.Future[Any]) -> bool:
    return future.cancelled() or future.exception() is not None


class RedisAnnouncer:
    """Publishes job ids on ``CHANNEL``, tagged with this publisher's origin (so a coordinator
    skips its own messages: it has woken its waiters already). Failures are logged, not raised:
    the transition has committed, and a notification is only a hint."""

    def __init__(self, url: str) -> None:
        self.origin = uuid.uuid4().hex
        self._client = redis.Redis.from_url(
            url, socket_timeout=PUBLISH_TIMEOUT_S, socket_connect_timeout=PUBLISH_TIMEOUT_S
        )

    def __call__(self, job_id: uuid.UUID) -> None:
        try:
            self._client.publish(CHANNEL, f"{self.origin} {job_id}")
        except redis.RedisError as exc:
            log.warning("could not announce job %s on Redis (waiters time out): %s", job_id, exc)

    def close(self) -> None:
        self._client.close()


def _ignore(job_id: uuid.UUID) -> None:
    """The announcement of a process nobody can hear (a worker without a Redis broker)."""


def announcer_for(broker_url: str | None) -> JobAnnounce:
    """A worker's ``Runtime.notify``: publish on Redis, or nothing without a Redis broker."""
    url = redis_url_of(broker_url)
    return _ignore if url is None else RedisAnnouncer(url)


class JobNotifier:
    """The coordinator's notifications: its ``Waiters``, plus Redis pub/sub when the broker is
    Redis (published by ``publish``, received by the subscriber ``start`` runs)."""

    def __init__(self, waiters: Waiters, broker_url: str | None) -> None:
        self.waiters = waiters
        self._url = redis_url_of(broker_url)
        self._announcer = None if self._url is None else RedisAnnouncer(self._url)
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    def publish(self, job_id: uuid.UUID) -> None:
        """``Runtime.notify``: called after the commit that changed ``job_id``, on any thread."""
        self.waiters.wake(job_id)
        if self._announcer is not None:
            self._announcer(job_id)

    async def start(self) -> None:
        """Subscribe to the other processes' announcements (a no-op without Redis). Waits
        (briefly) for the first subscription, so a coordinator that answers ``/readyz`` hears
        what is published from then on."""
        if self._url is None:
            return
        self._listener = asyncio.create_task(self._listen(self._url), name="flaas-notify")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout=5.0)
        if not self._subscribed.is_set():
            log.warning("not subscribed to Redis notifications yet; retrying in the background")

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._announcer is not None:
            self._announcer.close()

    async def _listen(self, url: str) -> None:
        assert self._announcer is not None
        own = self._announcer.origin
        while True:
            try:
                client = redis.asyncio.Redis.from_url(url)
                async with client, client.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    self._subscribed.set()
                    # Whatever was published while we were not subscribed is lost: re-check all.
                    self.waiters.wake_all()
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._deliver(message["data"], own)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down or restarting: waits end at their bound
                log.warning(
                    "Redis notifications interrupted (%s); resubscribing in %.0f s",
                    exc,
                    RESUBSCRIBE_DELAY_S,
                )
                await asyncio.sleep(RESUBSCRIBE_DELAY_S)

    def _deliver(self, data: bytes, own: str) -> None:
        origin, _, job = data.decode(errors="replace").partition(" ")
        if origin == own:
            return
        try:
            job_id = uuid.UUID(job)
        except ValueError:
            log.warning("ignored a malformed notification: %r", data[:100])
            return
        self.waiters.wake(job_id)
