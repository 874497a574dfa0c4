"""Known clients: the credentials this coordinator process has authenticated, kept in memory so
that a client's repeated task requests read nothing to learn who sent them.

A credential belongs to one client of one job for good: clients are never deleted and a
credential is never reissued or revoked, so what a cache hit answers (the client's id and
job) cannot go stale. Its last-seen time is kept too, so that a hit knows without a read
whether ``FLAAS_LAST_SEEN_INTERVAL_S`` has passed (``enrolment.mark_seen``); a write by
another process or route only makes that copy older, which costs one conditional UPDATE that
changes nothing. The round whose update this process last accepted for the client is kept
too (``accepted_round_id``): an acceptance is final, so a renewed task request in that round
is answered without reading the client's assignment again (another process reads it). If
credentials ever become revocable, revoking must evict them here, in every process.

At most ``FLAAS_KNOWN_CLIENTS_MAX`` entries, the least recently used dropped first (one is a
few hundred bytes); a dropped client is read again on its next request.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from server.db.models import Client
from server.security import hash_secret


@dataclass(eq=False)
class KnownClient:
    """What a request needs of its authenticated client: who it is, its job, when it was last
    seen and the round whose update this process last accepted for it (as far as this process
    knows)."""

    id: uuid.UUID
    job_id: uuid.UUID
    last_seen_at: datetime
    accepted_round_id: uuid.UUID | None = None


def mark_accepted(client: ClientRef, round_id: uuid.UUID) -> None:
    """Remember, after the commit, that ``client``'s update in ``round_id`` was accepted (a
    client this process does not keep is read again instead)."""
    if isinstance(client, KnownClient):
        client.accepted_round_id = round_id


#: An authenticated client as a request holds it: its row, or its entry here.
ClientRef = Client | KnownClient


class KnownClients:
    """Credential hash -> ``KnownClient``, least recently used first (thread-safe)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._by_hash: OrderedDict[str, KnownClient] = OrderedDict()

    def get(self, credential: str) -> KnownClient | None:
        """The client holding ``credential``, if this process has authenticated it."""
        key = hash_secret(credential)
        with self._lock:
            known = self._by_hash.get(key)
            if known is not None:
                self._by_hash.move_to_end(key)
            return known

    def remember(self, credential: str, client: Client) -> KnownClient:
        """Keep ``client`` (just authenticated with ``credential``); returns its entry."""
        known = KnownClient(client.id, client.job_id, client.last_seen_at)
        if self.limit <= 0:
            return known
        key = hash_secret(credential)
        with self._lock:
            self._by_hash[key] = known
            self._by_hash.move_to_end(key)
            while len(self._by_hash) > self.limit:
                self._by_hash.popitem(last=False)
        return known
