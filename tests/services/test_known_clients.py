"""Known clients: a credential authenticated once is answered from memory, within a limit."""

from __future__ import annotations

import uuid

from server.db.models import Client, utcnow
from server.services.known_clients import KnownClients


def _client() -> Client:
    return Client(id=uuid.uuid4(), job_id=uuid.uuid4(), last_seen_at=utcnow())


def test_a_remembered_credential_answers_its_client_and_job() -> None:
    known = KnownClients(limit=10)
    client = _client()
    assert known.get("flaas_c_a") is None
    known.remember("flaas_c_a", client)
    hit = known.get("flaas_c_a")
    assert hit is not None
    assert (hit.id, hit.job_id, hit.last_seen_at) == (
        client.id,
        client.job_id,
        client.last_seen_at,
    )
    assert known.get("flaas_c_a ") is None  # the credential exactly as issued


def test_the_least_recently_used_credential_goes_first() -> None:
    known = KnownClients(limit=2)
    for name in ("a", "b"):
        known.remember(name, _client())
    assert known.get("a") is not None  # "b" is now the least recently used
    known.remember("c", _client())
    assert known.get("b") is None
    assert known.get("a") is not None
    assert known.get("c") is not None


def test_a_limit_of_zero_keeps_nothing() -> None:
    known = KnownClients(limit=0)
    entry = known.remember("a", _client())
    assert entry.id is not None
    assert known.get("a") is None
